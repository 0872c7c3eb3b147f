"""MaskGIT: a bidirectional masked-token prior with iterative parallel decoding.

MoVQ's second stage (the MoVQ paper, Fig. 2 right) is a MaskGIT over
*multichannel* tokens: each spatial position carries ``M`` codes from one
shared codebook of ``vocab_size`` codes. The MoVQ authors released no prior
code and the MaskGIT reference handles one code per position only
(docs/reference-implementations.md "MaskGIT"), so the multichannel design below is
vqzoo's own.

Token layouts
-------------
``token_shape`` ``(T,)`` or ``(H, W)``: one code per position (``M = 1``);
``(H, W, M)``: ``M`` codes per position, as MoVQ's tokenizer produces them.
Internally tokens are ``(B, P, M)`` with ``P`` positions (``T`` or ``H*W``,
row-major); :meth:`forward` and :meth:`generate` take and return the
caller's layout.

Multichannel embedding and prediction (decisions)
-------------------------------------------------
* One sequence position per spatial position, so attention cost depends on
  ``P``, not ``P*M``.
* Input: the sum of ``M`` *channel-specific* embeddings,
  ``e = sum_m E[m * (V+1) + t_m]`` (one table of ``M*(V+1)`` rows; ``V+1``
  because each channel has its own [MASK] row). Sharing one code table and
  adding a channel embedding instead would make the sum permutation-invariant
  (``sum_m (E[t_m] + c_m) = sum_m E[t_m] + const``): the model could not tell
  which channel holds which code. Separate tables avoid that at the cost of
  ``M`` times the embedding parameters.
* Output: one linear head producing ``M * V`` logits per position, reshaped
  to ``(M, V)``: channel ``m`` of a position gets its own distribution over
  the shared codebook.
* Masking is per (position, channel): each of the ``N = P*M`` codes is masked
  independently in training, and in decoding the schedule counts, confidences
  and re-masking all operate on the ``N`` codes. A position can thus have
  some channels known and others still masked, and the model conditions each
  channel's prediction on the known channels of the same position.

Training (reference facts plus decisions)
-----------------------------------------
Per sample ``r ~ U(0, 1)``, ``n = ceil(N * schedule(r))`` clipped to
``[1, N]`` codes are masked (``ceil`` rather than lucidrains' ``round`` so a
positive ratio never rounds to zero; with the schedules clipped at 1e-6,
``ceil`` alone already guarantees ``n >= 1``), chosen as the ``n`` smallest
of per-code uniform noise (argsort). Cross-entropy with ``label_smoothing``
(0.1 in the reference) on the masked codes only. The reference's
``min_masking_rate`` belongs to unreleased training code and is not used.

Decoding (google-research/maskgit ``parallel_decode``)
-------------------------------------------------------
At step ``t`` of ``T`` (``num_steps``, default 12):

1. sample every code from ``softmax(logits / temperature)``;
2. keep the codes that were already known;
3. ``ratio = (t+1)/T``, ``mask_ratio = schedule(ratio)`` with ``N0`` (the
   number unknown at the start) as the schedule's ``N``;
4. known codes get confidence ``+inf``;
5. ``mask_len = floor(N0 * mask_ratio)`` clipped to ``[1, #unknown - 1]``;
6. ``confidence = log p(sampled) + choice_temperature * (1 - ratio) * Gumbel``;
7. re-mask the ``mask_len`` lowest-confidence codes.

The last step returns its sampled codes without re-masking (the reference
returns ``final_seqs[:, -1]``, the sampled ids of the last step).
The reference compares ``confidence < sorted[mask_len]``; selecting by rank
masks the same codes when confidences are distinct and exactly ``mask_len``
codes when they tie. ``temperature`` is 1 in the reference; other values
scale the logits for both the draw and the confidence.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.transformer import init_gpt_weights
from vqzoo.priors.base import Prior, PriorBatch, classifier_free_guidance, draw_categorical
from vqzoo.priors.schedules import MASK_SCHEDULES, mask_ratio

__all__ = ["MaskGIT"]


class MaskGIT(Prior):
    """Bidirectional transformer prior over (multichannel) image tokens, decoded in parallel.

    Args:
        vocab_size: codebook size ``V``; the [MASK] id is ``V``.
        token_shape: ``[T]``, ``[H, W]`` or ``[H, W, M]`` (see module doc).
        condition: ``"none"`` or ``"class"`` (a prepended class token).
        num_classes: number of classes; one extra "null" class is added for
            classifier-free guidance.
        cond_drop_prob: training probability of replacing the class by null.
        mask_schedule: ``cosine`` (default), ``linear``, ``square``, ``cubic``,
            ``log`` or ``exp``, used in training and decoding.
        label_smoothing: of the masked-token cross-entropy (reference 0.1).
        num_steps: default decoding steps (reference 12).
        choice_temperature: default Gumbel temperature of the re-masking
            choice (reference class-conditional config: 4.5).
        preset, n_layer, n_head, n_embd, embd_pdrop, resid_pdrop, attn_pdrop
        (transformer size and dropouts), optimizer, lr_scheduler, warmup_steps,
        lr_schedule, min_lr_ratio, total_steps, tokenizer, scale_lr: see
        :class:`~vqzoo.priors.base.Prior`. The reference's optimizer (lr 1e-4,
        betas (0.9, 0.96), weight decay 0.045, 5000 warm-up steps) is set in
        the MaskGIT configs, not as defaults here.
    """

    def __init__(
        self,
        vocab_size: int,
        token_shape: list[int],
        condition: Literal["none", "class"] = "none",
        num_classes: int = 0,
        cond_drop_prob: float = 0.0,
        mask_schedule: Literal["cosine", "linear", "square", "cubic", "log", "exp"] = "cosine",
        label_smoothing: float = 0.1,
        num_steps: int = 12,
        choice_temperature: float = 4.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.drop_callable_hparams()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        shape = tuple(int(s) for s in token_shape)
        if len(shape) not in (1, 2, 3) or any(s < 1 for s in shape):
            raise ValueError(
                f"token_shape must be [T], [H, W] or [H, W, M] with positive sizes, got {list(token_shape)}"
            )
        if condition not in ("none", "class"):
            raise ValueError(f"MaskGIT condition must be 'none' or 'class', got {condition!r}")
        if condition == "class" and num_classes < 1:
            raise ValueError(f"condition='class' needs num_classes >= 1, got {num_classes}")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if cond_drop_prob > 0 and condition != "class":
            raise ValueError("cond_drop_prob applies to condition='class' only")
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {MASK_SCHEDULES}, got {mask_schedule!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if choice_temperature < 0:
            raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")

        self.vocab_size = int(vocab_size)
        self.mask_token_id = self.vocab_size
        self.token_shape = shape
        self.num_channels = shape[2] if len(shape) == 3 else 1
        self.num_positions = math.prod(shape[:2]) if len(shape) == 3 else math.prod(shape)
        self.num_tokens = self.num_positions * self.num_channels
        self.condition = condition
        self.num_classes = int(num_classes) if condition == "class" else 0
        self.null_class = self.num_classes
        self.cond_drop_prob = float(cond_drop_prob)
        self.mask_schedule = mask_schedule
        self.label_smoothing = float(label_smoothing)
        self.num_steps = int(num_steps)
        self.choice_temperature = float(choice_temperature)
        if mask_schedule in ("log", "exp") and self.num_tokens < 2:
            raise ValueError(f"the {mask_schedule!r} schedule needs at least 2 tokens")

        n_embd = self.n_embd
        prefix = 1 if condition == "class" else 0
        self._prefix = prefix
        M, V = self.num_channels, self.vocab_size
        self.tok_emb = nn.Embedding(M * (V + 1), n_embd)
        self.register_buffer(
            "channel_offsets", torch.arange(M, dtype=torch.long) * (V + 1), persistent=False
        )
        self.class_emb = nn.Embedding(self.num_classes + 1, n_embd) if condition == "class" else None
        self.pos_emb = nn.Embedding(prefix + self.num_positions, n_embd)
        self.trunk = self.build_trunk(max_len=prefix + self.num_positions, causal=False)
        self.head = nn.Linear(n_embd, M * V)
        for module in (self.tok_emb, self.class_emb, self.pos_emb, self.head):
            if module is not None:
                module.apply(init_gpt_weights)

    # -- validation --------------------------------------------------------------------

    def _check_labels(self, labels: Any, n: int, broadcast: bool) -> Tensor | None:
        if self.condition == "none":
            if labels is not None:
                raise ValueError(
                    "this MaskGIT is unconditional (condition='none') but a condition of type "
                    f"{type(labels).__name__} was given"
                )
            return None
        return self.check_class_labels(labels, n, broadcast)

    # -- model ---------------------------------------------------------------------------

    def _logits(self, codes: Tensor, labels: Tensor | None) -> Tensor:
        """``codes`` ``(B, P, M)`` with [MASK] = V -> logits ``(B, P, M, V)``."""
        B = codes.shape[0]
        x = self.tok_emb(codes + self.channel_offsets).sum(dim=2)
        if self.class_emb is not None:
            x = torch.cat([self.class_emb(labels).unsqueeze(1), x], dim=1)  # type: ignore[arg-type]
        x = x + self.pos_emb.weight.unsqueeze(0)
        h = self.trunk(x)[:, self._prefix :]
        return self.head(h).view(B, self.num_positions, self.num_channels, self.vocab_size)

    def forward(self, tokens: Tensor, condition: Any = None) -> Tensor:
        """Logits ``(B, *token_shape, V)`` for tokens ``(B, *token_shape)`` that may contain [MASK]."""
        tokens = self.check_image_tokens(tokens, allow_extra=(self.mask_token_id,))
        B = tokens.shape[0]
        labels = self._check_labels(condition, B, broadcast=False)
        logits = self._logits(tokens.view(B, self.num_positions, self.num_channels), labels)
        return logits.view(B, *self.token_shape, self.vocab_size)

    def num_masked_for(self, r: Tensor) -> Tensor:
        """Training mask counts ``ceil(N * schedule(r))`` clipped to ``[1, N]`` (int64)."""
        ratio = mask_ratio(r.to(torch.float64), self.mask_schedule, self.num_tokens)
        return torch.ceil(self.num_tokens * ratio).clamp(1, self.num_tokens).long()

    def random_mask(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        """A training mask ``(B, N)``: per sample ``r ~ U(0,1)``, mask the ``n(r)`` lowest-noise codes."""
        device = self.device if device is None else device
        n_mask = self.num_masked_for(torch.rand(batch_size, device=device, dtype=torch.float64))
        noise = torch.rand(batch_size, self.num_tokens, device=device)
        rank = noise.argsort(dim=1).argsort(dim=1)
        return rank < n_mask.unsqueeze(1)

    def compute_loss(self, batch: PriorBatch) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = self.check_image_tokens(batch.tokens)
        B = tokens.shape[0]
        target = tokens.reshape(B, self.num_tokens)
        labels = self._check_labels(batch.labels if self.condition == "class" else None, B, broadcast=False)
        if labels is not None and self.training and self.cond_drop_prob > 0:
            drop = torch.rand(B, device=labels.device) < self.cond_drop_prob
            labels = labels.masked_fill(drop, self.null_class)
        mask = self.random_mask(B, tokens.device)
        inputs = target.masked_fill(mask, self.mask_token_id)
        logits = self._logits(inputs.view(B, self.num_positions, self.num_channels), labels)
        # Fixed shapes: a loss over every position weighted by the mask, divided by the number
        # masked. `logits[mask]` would read the mask's count back to the host (a sync per step).
        logits = logits.reshape(B * self.num_tokens, self.vocab_size).float()
        truth = target.reshape(-1)
        weight = mask.reshape(-1).float()
        count = weight.sum().clamp_min(1.0)
        per_token = F.cross_entropy(logits, truth, label_smoothing=self.label_smoothing, reduction="none")
        loss = (per_token * weight).sum() / count
        with torch.no_grad():
            acc = ((logits.argmax(-1) == truth).float() * weight).sum() / count
            if self.label_smoothing > 0:
                ce = (F.cross_entropy(logits, truth, reduction="none") * weight).sum() / count
            else:
                ce = loss.detach()
        return loss, {"masked_accuracy": acc, "masked_ce": ce, "mask_fraction": mask.float().mean()}

    # -- decoding ------------------------------------------------------------------------

    def generate(
        self,
        n: int,
        condition: Any = None,
        tokens: Tensor | None = None,
        num_steps: int | None = None,
        temperature: float = 1.0,
        choice_temperature: float | None = None,
        mask_schedule: Literal["cosine", "linear", "square", "cubic", "log", "exp"] | None = None,
        cfg_scale: float | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Iteratively decode ``n`` token arrays ``(n, *token_shape)`` (see the module doc).

        Args:
            n: number of samples.
            condition: ``None``, a class id, or ``n`` class ids.
            tokens: optional ``(n, *token_shape)`` start tokens; entries equal
                to :attr:`mask_token_id` (``vocab_size``) are generated, the
                others are kept unchanged (inpainting / editing).
            num_steps: decoding steps (default: the model's ``num_steps``).
            temperature: softmax temperature of the draws (0 = argmax).
            choice_temperature: Gumbel temperature of the re-masking choice
                (default: the model's ``choice_temperature``).
            mask_schedule: override the model's schedule for decoding.
            cfg_scale: classifier-free guidance scale (class models trained
                with ``cond_drop_prob > 0``).
            generator: source of randomness (on the model's device).
            return_trajectory: also return the tokens after every step
                (masked codes shown as :attr:`mask_token_id`). Decoding stops
                early, with a shorter trajectory, once nothing is unknown.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        steps = self.num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        choice_t = self.choice_temperature if choice_temperature is None else float(choice_temperature)
        if choice_t < 0:
            raise ValueError(f"choice_temperature must be >= 0, got {choice_t}")
        schedule = self.mask_schedule if mask_schedule is None else mask_schedule
        if schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {MASK_SCHEDULES}, got {schedule!r}")
        labels = self._check_labels(condition, n, broadcast=True)
        if cfg_scale is not None:
            if self.condition != "class":
                raise ValueError("cfg_scale needs condition='class'")
            if self.cond_drop_prob <= 0:
                raise ValueError(
                    "cfg_scale needs a model trained with cond_drop_prob > 0 (the null class is untrained)"
                )
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])  # type: ignore[arg-type]
        N, V, MASK = self.num_tokens, self.vocab_size, self.mask_token_id
        if tokens is None:
            cur = torch.full((n, N), MASK, dtype=torch.long, device=self.device)
        else:
            tokens = self.check_image_tokens(tokens.to(self.device), allow_extra=(MASK,))
            if tokens.shape[0] != n:
                raise ValueError(f"tokens has batch size {tokens.shape[0]} but n={n}")
            cur = tokens.reshape(n, N).clone()
        unknown0 = (cur == MASK).sum(dim=1)
        # Fewer than 2 unknown codes leave nothing to schedule (mask_len clips to 1).
        sched_n = unknown0.clamp(min=2)
        trajectory: list[Tensor] = []
        with self.sampling_mode():
            for t in range(steps):
                unknown = cur == MASK
                if not bool(unknown.any()):
                    break
                model_in = cur if cfg_scale is None else torch.cat([cur, cur])
                logits = self._logits(model_in.view(-1, self.num_positions, self.num_channels), labels)
                logits = classifier_free_guidance(logits.reshape(-1, N, V).float(), n, cfg_scale)
                if temperature == 0:
                    sampled = logits.argmax(dim=-1)
                    logp_all = F.log_softmax(logits, dim=-1)
                else:
                    logp_all = F.log_softmax(logits / temperature, dim=-1)
                    sampled = draw_categorical(logp_all.exp().reshape(-1, V), generator).view(n, N)
                sampled = torch.where(unknown, sampled, cur)
                if t == steps - 1:
                    cur = sampled
                    trajectory.append(cur.clone())
                    break
                ratio = (t + 1) / steps
                r = torch.full((n,), ratio, dtype=torch.float64, device=cur.device)
                m_ratio = mask_ratio(r, schedule, sched_n)
                mask_len = torch.floor(unknown0.to(torch.float64) * m_ratio).long()
                mask_len = torch.maximum(
                    torch.ones_like(mask_len), torch.minimum(unknown.sum(dim=1) - 1, mask_len)
                )
                logp = logp_all.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
                u = torch.rand(n, N, device=cur.device, generator=generator)
                tiny = torch.finfo(u.dtype).tiny
                gumbel = -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))
                confidence = logp + choice_t * (1.0 - ratio) * gumbel
                confidence = confidence.masked_fill(~unknown, float("inf"))
                rank = confidence.argsort(dim=1).argsort(dim=1)
                remask = (rank < mask_len.unsqueeze(1)) & unknown
                cur = sampled.masked_fill(remask, MASK)
                trajectory.append(cur.clone())
        out = cur.view(n, *self.token_shape)
        if return_trajectory:
            return out, [s.view(n, *self.token_shape) for s in trajectory]
        return out
