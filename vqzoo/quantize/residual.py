"""Residual quantization: ``R`` levels, each quantizing what the levels before it left over.

With ``ρ_0 = z`` and any inner quantizer ``Q_r`` per level::

    q_r = Q_r(ρ_r),   ρ_{r+1} = ρ_r − q_r,   quantized = Σ_r q_r,   loss = Σ_r loss_r

(Zeghidour et al. 2021, "SoundStream"; Lee et al. 2022, "Autoregressive Image
Generation using Residual Quantization"). Decisions:

* Gradients follow the computation as written, with each level's own
  estimator: with straight-through levels ``∂ρ_1/∂z = I − I = 0``, so the
  encoder receives the decoder's gradient once (the identity, as for one
  level) and the commitment term of level 0; deeper levels learn their codes
  from their own codebook terms. (Detaching the residuals instead would hand
  the encoder ``R`` copies of the decoder gradient.)
* Indices carry the level as the last axis, like multichannel indices:
  spatial ``(B, H, W, R)``, multichannel ``(B, H, W, M·R)`` (the ``R`` levels
  of a chunk consecutive), per-token ``(B, T, R)``. MaskGIT models ``(H, W,
  R)`` tokens as channels of one position; MiniGPT flattens them row-major, so
  the ``R`` codes of a position are predicted one after another, coarse first.
* ``shared_codebook=True`` uses one inner quantizer for every level (one
  usage row); otherwise level ``r > 0`` is a deep copy of the given quantizer
  with freshly drawn parameters, or each level is given explicitly as a list.
* Quantizer dropout (training only): with probability ``quantizer_dropout``
  a batch uses only the first ``d ~ U{1, …, R}`` levels. ``d`` comes from a
  host-side generator (Python's ``random.Random``) seeded by ``(dropout_seed, step)``, where ``step`` counts
  training forwards and travels in the checkpoint; every rank draws the same
  ``d`` without a collective or a host sync. Dropped levels still run and
  enter the output and loss multiplied by zero, so every parameter takes part
  in every backward (DDP needs that without ``find_unused_parameters``); their
  codebooks still see their true residuals (usage, EMA).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from torch import nn

from vqzoo.quantize.base import Quantizer, QuantizerOutput, grouped_histogram


class ResidualQuantizer(Quantizer):
    """``R`` levels of any inner quantizer, summed; the inner quantizer sets the layout.

    Args:
        quantizer: the inner quantizer (copied ``depth`` times, or shared), or a
            list of ``R`` inner quantizers, one per level. All levels must agree
            on layout, ``dim``, ``num_channels``, ``num_groups`` and ``num_codes``.
        depth: R, the number of levels (>= 1); with a list it defaults to its length.
        shared_codebook: one quantizer (one codebook) for every level.
        quantizer_dropout: probability that a training batch uses a random
            prefix of the levels (module doc).
        dropout_seed: seed of the dropout draws.
        check_inputs: validate ``z`` in forward (the levels' own checks are not used).
    """

    def __init__(
        self,
        quantizer: Quantizer | list[Quantizer],
        depth: int | None = None,
        shared_codebook: bool = False,
        quantizer_dropout: float = 0.0,
        dropout_seed: int = 0,
        check_inputs: bool = True,
    ) -> None:
        name = type(self).__name__
        given = list(quantizer) if isinstance(quantizer, (list, tuple, nn.ModuleList)) else [quantizer]
        if not given or not all(isinstance(q, Quantizer) for q in given):
            got = [type(q).__name__ for q in given]
            raise ValueError(f"{name}: quantizer must be a vqzoo Quantizer or a non-empty list of them, got {got}")
        if len(given) > 1:
            if shared_codebook:
                raise ValueError(f"{name}: shared_codebook=True needs one quantizer, got a list of {len(given)}")
            depth = len(given) if depth is None else depth
            if depth != len(given):
                raise ValueError(f"{name}: depth={depth} disagrees with the {len(given)} quantizers given")
        if depth is None:
            raise ValueError(f"{name}: give depth (the number of levels R) with a single quantizer")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"{name}: depth must be an integer >= 1, got {depth!r}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"{name}: quantizer_dropout must lie in [0, 1], got {quantizer_dropout}")
        if not isinstance(dropout_seed, int) or dropout_seed < 0:
            raise ValueError(f"{name}: dropout_seed must be an integer >= 0, got {dropout_seed!r}")
        first = given[0]
        for q in given:
            if q.num_levels != 1:
                raise ValueError(f"{name}: inner quantizers must have one index per vector, got {type(q).__name__}")
            spec = (q.layout, q.dim, q.num_channels, q.num_groups, q.num_codes)
            if spec != (first.layout, first.dim, first.num_channels, first.num_groups, first.num_codes):
                raise ValueError(
                    f"{name}: every level must have the same (layout, dim, num_channels, num_groups, num_codes); "
                    f"got {spec} and {(first.layout, first.dim, first.num_channels, first.num_groups, first.num_codes)}"
                )
        super().__init__(
            first.dim, layout=first.layout, num_channels=first.num_channels, num_groups=first.num_groups,
            check_inputs=check_inputs,
        )
        if len(given) == 1 and not shared_codebook:
            for _ in range(depth - 1):
                level = copy.deepcopy(first)
                level.reset_parameters()
                given.append(level)
        self.levels = nn.ModuleList(given)
        self.depth = depth
        self.shared_codebook = shared_codebook
        self.quantizer_dropout = quantizer_dropout
        self.dropout_seed = dropout_seed
        self._dropout_step = 0  # training forwards so far, in the checkpoint through get_extra_state
        self.last_depth = depth

    # ------------------------------------------------------------------ properties
    @property
    def num_codes(self) -> int:
        return self.levels[0].num_codes

    @property
    def num_levels(self) -> int:
        return self.depth

    @property
    def num_codebooks(self) -> int:
        return self.num_groups * len(self.levels)

    def level(self, r: int) -> Quantizer:
        return self.levels[0 if self.shared_codebook else r]

    def describe_dim(self) -> str:
        return self.levels[0].describe_dim()

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, shared_codebook={self.shared_codebook}, "
            f"quantizer_dropout={self.quantizer_dropout}"
        )

    def get_extra_state(self) -> Any:
        return {"dropout_step": self._dropout_step}

    def set_extra_state(self, state: Any) -> None:
        self._dropout_step = int(state["dropout_step"])

    # ------------------------------------------------------------------ quantization
    def active_depth(self) -> int:
        """Levels used by this forward: R, or a random prefix under quantizer dropout (training)."""
        if not (self.training and self.quantizer_dropout > 0):
            return self.depth
        step = self._dropout_step
        self._dropout_step += 1
        # A host-side generator: the draw is the same on every rank and never waits for a device.
        rng = random.Random((self.dropout_seed << 32) + step)
        if rng.random() >= self.quantizer_dropout:
            return self.depth
        return rng.randint(1, self.depth)

    def quantize_vectors(self, x: torch.Tensor) -> QuantizerOutput:
        depth = self.active_depth()
        self.last_depth = depth
        residual = x
        total: torch.Tensor | None = None
        indices = []
        losses: dict[str, torch.Tensor] = {}
        for r in range(self.depth):
            out = self.level(r).quantize_vectors(residual)
            residual = residual - out.quantized
            # Dropped levels stay in the graph with weight 0 (module doc).
            q = out.quantized if r < depth else out.quantized * 0.0
            total = q if total is None else total + q
            indices.append(out.indices)
            for key, value in out.losses.items():
                losses[f"{key}_{r}"] = value if r < depth else value * 0.0
        loss = torch.stack(list(losses.values())).sum() if losses else x.new_zeros(())
        assert total is not None
        # depth 1 has no level axis, like any single quantizer (index_shape says the same)
        codes = torch.stack(indices, dim=-1) if self.depth > 1 else indices[0]
        return QuantizerOutput(quantized=total, indices=codes, loss=loss, losses=losses)

    def lookup_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        if self.depth == 1:
            codes = codes.unsqueeze(-1)
        total = self.level(0).lookup_vectors(codes[..., 0])
        for r in range(1, self.depth):
            total = total + self.level(r).lookup_vectors(codes[..., r])
        return total

    # ------------------------------------------------------------------ hooks
    def histogram(self, indices: torch.Tensor) -> torch.Tensor:
        """Counts ``(G·R, K)`` (row ``r·G + g``: level r, group g), or ``(G, K)`` with a shared codebook."""
        codes = self.codes_from_indices(indices.long())  # (G, N, R)
        if self.depth == 1:
            codes = codes.unsqueeze(-1)
        if self.shared_codebook:
            return grouped_histogram(codes.reshape(codes.shape[0], -1), self.num_codes)
        return grouped_histogram(codes.permute(2, 0, 1).reshape(-1, codes.shape[1]), self.num_codes)

    def after_backward(self) -> None:
        for level in self.levels:
            level.after_backward()

    def after_step(self) -> int:
        return sum(level.after_step() for level in self.levels)
