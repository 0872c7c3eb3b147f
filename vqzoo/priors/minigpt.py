"""MiniGPT: an autoregressive token prior (unconditional, class- or text-conditioned).

It serves two papers' second stages:

* QG-VAE §4.2: an unconditional minGPT over the 64 (CIFAR-10) global tokens;
* TE-VQGAN stage 2: one causal transformer for text-to-image ``[text; image]``
  and image-to-text ``[image; text]`` generation.

Sequence layout
---------------
Every sequence starts with one *start* token, so the first real token is also
predicted. The start token is a class token (class conditioning, including
one extra "null" class for classifier-free guidance), or a BOS token (two
exist: one for sequences that start with the image, one for sequences that
start with the text)::

    none   [BOS_img]  img_1 ... img_N
    class  [class_y]  img_1 ... img_N
    t2i    [BOS_txt]  txt_1 ... txt_L  img_1 ... img_N     (order="text_first")
    i2t    [BOS_img]  img_1 ... img_N  txt_1 ... txt_L     (order="image_first")

The model sees ``seq[:-1]`` and predicts ``seq[1:]``; multichannel or 2-D
token arrays are flattened in row-major order (for ``(H, W, M)`` the M codes
of a position are consecutive).

One embedding table covers all input ids: ``[image codes | text ids | class
ids + null | BOS_img, BOS_txt]``. Outputs use two bias-free heads, one over
the image codes and one over the text vocabulary; each position uses the head
of the modality it predicts. This is the same as one head over
``image + text`` with the other modality's logits masked to ``-inf`` (the
reference's per-position modality mask), without computing the masked part.

Positions are learned and indexed by *role*, not by sequence index: slot 0 is
the start token, ``1..L`` the text positions, ``L+1..L+N`` the image
positions. The same image position therefore has the same embedding in t2i
and i2t, which lets ``order="both"`` train one model for both directions (the
reference uses separate learned text and fixed 2-D image tables for the same
reason).

Losses (TE stage 2, docs/reference-implementations.md §A)
--------------------------------------------------------
``loss = (condition_loss_weight * CE_condition + image_loss_weight * CE_target)
/ (condition_loss_weight + image_loss_weight)``, defaults 1 and 7, so t2i is
``(CE_text + 7 CE_image) / 8``. The weights are assigned by *role*: the
reference gives the generated modality 7 in both directions, i2t being
``(CE_image + 7 CE_text) / 8``; here ``image_loss_weight`` weights whichever
modality the direction generates (the image in t2i, the text in i2t) and
``condition_loss_weight`` the prefix modality. Text positions whose target is
``text_pad_id`` are ignored (the reference's ``ignore_index=[PAD]``); the text
CE is the mean over non-pad targets. Class or unconditional models have only
the image CE. ``order="both"`` averages the t2i and i2t losses of each batch
(one optimizer step on the mean). ``order="alternate"`` is the reference's
``--task alternate``: each optimizer step trains one direction, t2i on even
and i2t on odd steps (the reference runs both on the same batch, i2t first,
with two optimizer steps), so a step costs half of a ``"both"`` step and the
same data gives twice the updates; evaluation averages both directions.

Because pad targets are never trained, a generated caption is meaningful up
to its end-of-sequence token; callers truncate there (vqzoo's caption
vocabulary decoder stops at EOS).

Sampling
--------
``generate`` feeds the prefix in one call and then one token per call through
a preallocated :class:`~vqzoo.nn.transformer.KVCache` (``use_cache=True``), or
recomputes the whole sequence for every token (``use_cache=False``). Both
paths draw their random numbers with the same calls in the same order (one
uniform draw of shape ``(n, 1)`` per token, see ``draw_categorical``), so with the same
``generator`` state they return the same tokens. ``temperature=0`` is greedy.
Classifier-free guidance (class conditioning only) runs the conditional and
the null-class sequences as one doubled batch and samples from
``u + cfg_scale * (c - u)``; it requires a model trained with
``cond_drop_prob > 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqzoo.nn.transformer import init_gpt_weights
from vqzoo.priors.base import Prior, PriorBatch, classifier_free_guidance, sample_logits

__all__ = ["MiniGPT", "MiniGPTOutput"]

Direction = Literal["image", "t2i", "i2t"]


@dataclass
class MiniGPTOutput:
    """Logits of one direction: ``image`` ``(B, N, vocab_size)`` and ``text`` ``(B, L, text_vocab_size)``.

    ``image[:, i]`` is the distribution of image token ``i`` given everything
    before it in the sequence; likewise for ``text``.
    """

    image: Tensor
    text: Tensor | None = None


class MiniGPT(Prior):
    """Autoregressive (GPT) prior over image tokens, optionally conditioned on a class or text.

    Args:
        vocab_size: number of image codes (the tokenizer's codebook size).
        token_shape: shape of one token array, e.g. ``[8, 8]``, ``[16, 16, 4]``
            or ``[64]``; generated tokens come back in this shape.
        num_image_tokens: alternative to ``token_shape`` (a flat count); then
            any token array with that many elements is accepted and samples
            are returned flat ``(n, N)``.
        condition: ``"none"``, ``"class"`` (class-token prefix) or ``"text"``.
        num_classes: number of classes (``condition="class"``); one more
            "null" class is added for classifier-free guidance.
        cond_drop_prob: training probability of replacing the class by the
            null class (enables ``cfg_scale`` at sampling).
        text_vocab_size: size of the text vocabulary (``condition="text"``).
        text_length: fixed (padded) caption length.
        text_pad_id: the text PAD id, ignored in the text loss.
        order: ``"text_first"`` (t2i), ``"image_first"`` (i2t), ``"both"``
            (one model, both directions in every step) or ``"alternate"``
            (one model, one direction per optimizer step; see module doc).
        condition_loss_weight: weight of the prefix modality's CE (see module doc).
        image_loss_weight: weight of the generated modality's CE (see module doc).
        preset, n_layer, n_head, n_embd, embd_pdrop, resid_pdrop, attn_pdrop
        (transformer size and dropouts), optimizer, lr_scheduler, warmup_steps,
        lr_schedule, min_lr_ratio, total_steps, tokenizer, scale_lr: see
        :class:`~vqzoo.priors.base.Prior`.
    """

    def __init__(
        self,
        vocab_size: int,
        token_shape: list[int] | None = None,
        num_image_tokens: int | None = None,
        condition: Literal["none", "class", "text"] = "none",
        num_classes: int = 0,
        cond_drop_prob: float = 0.0,
        text_vocab_size: int = 0,
        text_length: int = 0,
        text_pad_id: int = 0,
        order: Literal["text_first", "image_first", "both", "alternate"] = "text_first",
        condition_loss_weight: float = 1.0,
        image_loss_weight: float = 7.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.drop_callable_hparams()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if token_shape is None and num_image_tokens is None:
            raise ValueError("give token_shape (e.g. [8, 8]) or num_image_tokens")
        if token_shape is not None:
            shape = tuple(int(s) for s in token_shape)
            if not shape or any(s < 1 for s in shape):
                raise ValueError(f"token_shape must be non-empty positive sizes, got {token_shape}")
            if num_image_tokens is not None and num_image_tokens != math.prod(shape):
                raise ValueError(
                    f"num_image_tokens={num_image_tokens} disagrees with token_shape={list(shape)} "
                    f"({math.prod(shape)} tokens)"
                )
            self._flat_only = False
        else:
            if num_image_tokens < 1:  # type: ignore[operator]
                raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
            shape = (int(num_image_tokens),)  # type: ignore[arg-type]
            self._flat_only = True
        if condition not in ("none", "class", "text"):
            raise ValueError(f"condition must be 'none', 'class' or 'text', got {condition!r}")
        if condition == "class" and num_classes < 1:
            raise ValueError(f"condition='class' needs num_classes >= 1, got {num_classes}")
        if condition == "text":
            if text_vocab_size < 1 or text_length < 1:
                raise ValueError(
                    "condition='text' needs text_vocab_size >= 1 and text_length >= 1, got "
                    f"text_vocab_size={text_vocab_size}, text_length={text_length}"
                )
            if not 0 <= text_pad_id < text_vocab_size:
                raise ValueError(f"text_pad_id={text_pad_id} is outside [0, {text_vocab_size})")
        if order not in ("text_first", "image_first", "both", "alternate"):
            raise ValueError(
                f"order must be 'text_first', 'image_first', 'both' or 'alternate', got {order!r}"
            )
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        if cond_drop_prob > 0 and condition != "class":
            raise ValueError("cond_drop_prob applies to condition='class' only")
        weights = (condition_loss_weight, image_loss_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                "loss weights must be >= 0 with a positive sum, got "
                f"condition_loss_weight={condition_loss_weight}, image_loss_weight={image_loss_weight}"
            )

        self.vocab_size = int(vocab_size)
        self.token_shape = shape
        self.num_image_tokens = math.prod(shape)
        self.condition = condition
        self.num_classes = int(num_classes) if condition == "class" else 0
        self.cond_drop_prob = float(cond_drop_prob)
        self.text_vocab_size = int(text_vocab_size) if condition == "text" else 0
        self.text_length = int(text_length) if condition == "text" else 0
        self.text_pad_id = int(text_pad_id)
        self.order = order
        self.condition_loss_weight = float(condition_loss_weight)
        self.image_loss_weight = float(image_loss_weight)

        # id layout of the shared input embedding table
        self.text_offset = self.vocab_size
        self.class_offset = self.text_offset + self.text_vocab_size
        n_class_ids = self.num_classes + 1 if condition == "class" else 0
        self.null_class = self.num_classes  # id within the class block
        self.bos_image = self.class_offset + n_class_ids
        self.bos_text = self.bos_image + 1
        num_ids = self.bos_text + 1

        n_embd = self.n_embd
        self.tok_emb = nn.Embedding(num_ids, n_embd)
        self.pos_emb = nn.Embedding(1 + self.text_length + self.num_image_tokens, n_embd)
        self.trunk = self.build_trunk(max_len=self.num_image_tokens + self.text_length, causal=True)
        self.image_head = nn.Linear(n_embd, self.vocab_size, bias=False)
        self.text_head = (
            nn.Linear(n_embd, self.text_vocab_size, bias=False) if condition == "text" else None
        )
        for module in (self.tok_emb, self.pos_emb, self.image_head, self.text_head):
            if module is not None:
                module.apply(init_gpt_weights)

    # -- shapes and validation -------------------------------------------------------

    def token_shape_matches(self, shape: tuple[int, ...]) -> bool:
        if self._flat_only:
            return math.prod(shape) == self.num_image_tokens and len(shape) >= 1
        return tuple(shape) == self.token_shape

    def _directions(self) -> list[Direction]:
        if self.condition != "text":
            return ["image"]
        by_order: dict[str, list[Direction]] = {
            "text_first": ["t2i"],
            "image_first": ["i2t"],
            "both": ["t2i", "i2t"],
            "alternate": ["t2i", "i2t"],
        }
        return by_order[self.order]

    def _check_text(self, text: Any, n: int, broadcast: bool) -> Tensor:
        if text is None:
            raise ValueError("MiniGPT(condition='text') needs text token ids, got None")
        if not isinstance(text, Tensor):
            if isinstance(text, (int, float, str)):
                raise ValueError(
                    f"a text condition must be token ids of shape (n, {self.text_length}), "
                    f"got {type(text).__name__} {text!r}"
                )
            text = torch.as_tensor(text)
        text = text.to(self.device)
        if text.is_floating_point() or text.dtype == torch.bool:
            raise ValueError(f"text ids must be an integer tensor, got dtype {text.dtype}")
        if broadcast and text.dim() == 1:
            text = text.unsqueeze(0).expand(n, -1)
        if text.dim() != 2 or text.shape != (n, self.text_length):
            raise ValueError(
                f"text ids must have shape ({n}, {self.text_length}) (text_length="
                f"{self.text_length}), got {tuple(text.shape)}"
            )
        if text.numel() and self.values_check_due() and (int(text.min()) < 0 or int(text.max()) >= self.text_vocab_size):
            raise ValueError(
                f"text ids must be in [0, {self.text_vocab_size}), got values in "
                f"[{int(text.min())}, {int(text.max())}]"
            )
        return text.long()

    def _parse_condition(
        self, condition: Any, n: int, broadcast: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        if self.condition == "none":
            if condition is not None:
                raise ValueError(
                    "this MiniGPT is unconditional (condition='none') but a condition of type "
                    f"{type(condition).__name__} was given"
                )
            return None, None
        if self.condition == "class":
            return self.check_class_labels(condition, n, broadcast), None
        return None, self._check_text(condition, n, broadcast)

    # -- sequence building --------------------------------------------------------------

    def _image_pos(self, start: int = 0, stop: int | None = None) -> Tensor:
        stop = self.num_image_tokens if stop is None else stop
        return torch.arange(1 + self.text_length + start, 1 + self.text_length + stop, device=self.device)

    def _text_pos(self, start: int = 0, stop: int | None = None) -> Tensor:
        stop = self.text_length if stop is None else stop
        return torch.arange(1 + start, 1 + stop, device=self.device)

    def _start_ids(self, direction: Direction, n: int, labels: Tensor | None) -> Tensor:
        if direction == "t2i":
            return torch.full((n, 1), self.bos_text, dtype=torch.long, device=self.device)
        if self.condition == "class" and direction == "image":
            return (labels + self.class_offset).view(n, 1)  # type: ignore[operator]
        return torch.full((n, 1), self.bos_image, dtype=torch.long, device=self.device)

    def _sequence(
        self, direction: Direction, image: Tensor | None, labels: Tensor | None, text: Tensor | None, n: int
    ) -> tuple[Tensor, Tensor]:
        """Full sequence ids ``(n, S)`` and role positions ``(S,)``.

        ``image`` or ``text`` may be ``None`` to stop the sequence before them
        (a sampling prefix).
        """
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        ids = [self._start_ids(direction, n, labels)]
        pos = [zero]
        parts: list[str] = {"image": ["image"], "t2i": ["text", "image"], "i2t": ["image", "text"]}[direction]
        for part in parts:
            if part == "image" and image is not None:
                ids.append(image)
                pos.append(self._image_pos())
            elif part == "text" and text is not None:
                ids.append(text + self.text_offset)
                pos.append(self._text_pos())
        return torch.cat(ids, dim=1), torch.cat(pos)

    def _hidden(self, ids: Tensor, pos: Tensor, cache: Any = None) -> Tensor:
        return self.trunk(self.tok_emb(ids) + self.pos_emb(pos).unsqueeze(0), cache)

    # -- forward / loss ---------------------------------------------------------------------

    def forward(
        self, tokens: Tensor, condition: Any = None, direction: Direction | None = None
    ) -> MiniGPTOutput:
        """Teacher-forced logits for image ``tokens`` ``(B, *token_shape)`` and the condition.

        ``direction`` defaults to the model's first training direction
        (``"t2i"`` for text models with ``order`` text_first/both).
        """
        tokens = self.check_image_tokens(tokens)
        B = tokens.shape[0]
        labels, text = self._parse_condition(condition, B, broadcast=False)
        return self._forward(tokens.reshape(B, -1), labels, text, direction or self._directions()[0])

    def _forward(
        self, image: Tensor, labels: Tensor | None, text: Tensor | None, direction: Direction
    ) -> MiniGPTOutput:
        if direction not in self._directions():
            raise ValueError(
                f"direction {direction!r} is not available for condition={self.condition!r}, "
                f"order={self.order!r}; available: {self._directions()}"
            )
        B = image.shape[0]
        ids, pos = self._sequence(direction, image, labels, text, B)
        h = self._hidden(ids[:, :-1], pos[:-1])
        N, L = self.num_image_tokens, self.text_length
        if direction == "image":
            return MiniGPTOutput(image=self.image_head(h))
        text_head = self.text_head
        assert text_head is not None  # text directions exist only with condition="text"
        if direction == "t2i":
            return MiniGPTOutput(image=self.image_head(h[:, L:]), text=text_head(h[:, :L]))
        return MiniGPTOutput(image=self.image_head(h[:, :N]), text=text_head(h[:, N:]))

    def _text_ce(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = target != self.text_pad_id
        flat = logits.reshape(-1, logits.shape[-1]).float()
        ce = F.cross_entropy(flat, target.reshape(-1), reduction="none")
        return (ce * valid.reshape(-1)).sum() / valid.sum().clamp(min=1)

    def compute_loss(self, batch: PriorBatch) -> tuple[Tensor, dict[str, Tensor]]:
        tokens = self.check_image_tokens(batch.tokens)
        B = tokens.shape[0]
        image = tokens.reshape(B, -1)
        labels = text = None
        if self.condition == "class":
            labels = self.check_class_labels(batch.labels, B, broadcast=False)
            if self.training and self.cond_drop_prob > 0:
                drop = torch.rand(B, device=labels.device) < self.cond_drop_prob
                labels = labels.masked_fill(drop, self.null_class)
        elif self.condition == "text":
            text = self._check_text(batch.text, B, broadcast=False)
        logs: dict[str, Tensor] = {}
        total = image.new_zeros((), dtype=torch.float32)
        directions = self._directions()
        trained = directions
        if self.order == "alternate" and self.training:
            # global_step is a host-side count: choosing the direction needs no device sync
            trained = [directions[self.global_step % 2]]
        wc, wi = self.condition_loss_weight, self.image_loss_weight
        for direction in trained:
            out = self._forward(image, labels, text, direction)
            ce_img = F.cross_entropy(out.image.reshape(-1, self.vocab_size).float(), image.reshape(-1))
            suffix = "" if len(directions) == 1 else f"_{direction}"
            logs[f"loss_image{suffix}"] = ce_img.detach()
            if direction == "image":
                loss = ce_img
            else:
                ce_txt = self._text_ce(out.text, text)  # type: ignore[arg-type]
                logs[f"loss_text{suffix}"] = ce_txt.detach()
                if direction == "t2i":
                    loss = (wc * ce_txt + wi * ce_img) / (wc + wi)
                else:
                    loss = (wc * ce_img + wi * ce_txt) / (wc + wi)
                if len(directions) > 1:
                    logs[f"loss{suffix}"] = loss.detach()
            total = total + loss
        return total / len(trained), logs

    # -- sampling ------------------------------------------------------------------------------

    def _decode(
        self,
        prefix_ids: Tensor,
        prefix_pos: Tensor,
        target: Literal["image", "text"],
        n: int,
        cfg_scale: float | None,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        use_cache: bool,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Append ``target`` tokens one by one after ``prefix_ids`` (``n`` or ``2n`` rows with CFG)."""
        if target == "image":
            count, offset, head, new_pos = self.num_image_tokens, 0, self.image_head, self._image_pos()
        else:
            count, offset, new_pos = self.text_length, self.text_offset, self._text_pos()
            head = self.text_head
        rows = prefix_ids.shape[0]
        out = torch.empty(n, count, dtype=torch.long, device=self.device)
        if use_cache:
            cache = self.trunk.make_cache(rows, max_len=prefix_ids.shape[1] + count - 1)
            h = self._hidden(prefix_ids, prefix_pos, cache)[:, -1]
        else:
            seq, pos = prefix_ids, prefix_pos
            h = self._hidden(seq, pos)[:, -1]
        for i in range(count):
            logits = classifier_free_guidance(head(h), n, cfg_scale)  # type: ignore[misc]
            token = sample_logits(logits, temperature, top_k, top_p, generator)
            out[:, i] = token
            if i + 1 == count:
                break
            step = (token + offset).repeat(rows // n).unsqueeze(1)
            if use_cache:
                h = self._hidden(step, new_pos[i : i + 1], cache)[:, -1]
            else:
                seq = torch.cat([seq, step], dim=1)
                pos = torch.cat([pos, new_pos[i : i + 1]])
                h = self._hidden(seq, pos)[:, -1]
        return out

    def generate(
        self,
        n: int,
        condition: Any = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``n`` image token arrays ``(n, *token_shape)``.

        Args:
            n: number of samples.
            condition: ``None`` (unconditional); a class id or ``n`` class ids;
                text ids ``(text_length,)`` (shared) or ``(n, text_length)``.
            temperature: softmax temperature; 0 is greedy.
            top_k: keep only the k most likely codes.
            top_p: nucleus sampling mass.
            cfg_scale: classifier-free guidance scale (class conditioning; 1 =
                conditional, 0 = unconditional).
            use_cache: KV-cache decoding (same tokens as ``False``, faster).
            generator: source of randomness (on the model's device).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if "t2i" not in self._directions() and self.condition == "text":
            raise ValueError(
                "this MiniGPT was trained image-first (i2t) and cannot generate images from text"
            )
        labels, text = self._parse_condition(condition, n, broadcast=True)
        if cfg_scale is not None:
            if self.condition != "class":
                raise ValueError(f"cfg_scale needs condition='class', this model has {self.condition!r}")
            if self.cond_drop_prob <= 0:
                raise ValueError(
                    "cfg_scale needs a model trained with cond_drop_prob > 0 (the null class is untrained)"
                )
        with self.sampling_mode():
            direction: Direction = "t2i" if self.condition == "text" else "image"
            ids, pos = self._sequence(direction, None, labels, text, n)
            if cfg_scale is not None:
                null = torch.full_like(labels, self.null_class)  # type: ignore[arg-type]
                uncond, _ = self._sequence(direction, None, null, None, n)
                ids = torch.cat([ids, uncond])
            out = self._decode(
                ids, pos, "image", n, cfg_scale, temperature, top_k, top_p, use_cache, generator
            )
        return out.view(n, *self.token_shape)

    def generate_text(
        self,
        image_tokens: Tensor,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Image-to-text: sample caption ids ``(B, text_length)`` for image tokens ``(B, *token_shape)``.

        Needs ``condition="text"`` with ``order`` image_first or both. Ids after
        the caption's end token are unconstrained (pad targets are not trained).
        """
        if self.condition != "text" or "i2t" not in self._directions():
            raise ValueError(
                "generate_text needs condition='text' with order 'image_first' or 'both', this model "
                f"has condition={self.condition!r}, order={self.order!r}"
            )
        tokens = self.check_image_tokens(image_tokens.to(self.device))
        n = tokens.shape[0]
        with self.sampling_mode():
            ids, pos = self._sequence("i2t", tokens.reshape(n, -1), None, None, n)
            return self._decode(ids, pos, "text", n, None, temperature, top_k, top_p, use_cache, generator)
