"""A GPT-style transformer trunk shared by the token priors (pure torch).

The trunk takes *embeddings* ``(B, T, n_embd)`` and returns the final
layer-normed hidden states ``(B, T, n_embd)``. Token and positional
embeddings and the output heads belong to the priors, because each prior lays
out its sequence differently (class token + image, text + image in either
order, several code channels summed per position).

Facts from karpathy/minGPT (see docs/reference-implementations.md "minGPT"), implemented
here from scratch:

* pre-LN blocks ``x + attn(ln1(x))``, ``x + mlp(ln2(x))`` and a final LayerNorm;
* tanh-approximated GELU in a 4x MLP;
* dropouts on the embeddings (``embd_pdrop``), on each residual branch
  (``resid_pdrop``) and on the attention weights (``attn_pdrop``);
* init N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm
  weight 1 / bias 0, and the residual output projections (``c_proj``) at
  N(0, 0.02 / sqrt(2 * n_layer)) so the residual stream's variance does not
  grow with depth.

Attention goes through ``F.scaled_dot_product_attention`` (flash / memory
efficient kernels where available). ``causal=True`` gives a GPT,
``causal=False`` a bidirectional (BERT-like) encoder for MaskGIT.

KV cache
--------
minGPT and nanoGPT recompute the whole prefix for every sampled token
(docs/pitfalls.md #18), which makes sampling ``O(T^2)`` per token in
attention *and* ``O(T)`` in every linear layer. :class:`KVCache` preallocates
one key and one value buffer per layer of shape ``(B, n_head, max_len,
head_dim)``; each call writes its new keys/values in place at
``[length, length + T)`` and attends over ``[0, length + T)``. Feeding the
prefix in one call and then one token per call therefore costs ``O(T)`` per
new token. Nothing is concatenated or reallocated during decoding.

A multi-token call at a nonzero offset (e.g. feeding a prompt in two chunks)
is supported with an explicit causal mask aligned to the cache offset
(``F.scaled_dot_product_attention(is_causal=True)`` aligns the mask to the
top-left corner, which is only right when the offset is zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TRANSFORMER_PRESETS",
    "Block",
    "KVCache",
    "MLP",
    "SelfAttention",
    "Transformer",
    "init_gpt_weights",
    "resolve_transformer_size",
    "scale_residual_projections",
]

#: minGPT's named sizes: ``name -> (n_layer, n_head, n_embd)``.
TRANSFORMER_PRESETS: dict[str, tuple[int, int, int]] = {
    "gpt-mini": (6, 6, 192),
    "gpt-micro": (4, 4, 128),
    "gpt-nano": (3, 3, 48),
}


def resolve_transformer_size(
    preset: str | None,
    n_layer: int | None,
    n_head: int | None,
    n_embd: int | None,
) -> tuple[int, int, int]:
    """Turn a preset name and/or explicit sizes into ``(n_layer, n_head, n_embd)``.

    Rules (chosen so a config can never silently mean two things):

    * ``preset`` given: its sizes are used; an explicit size that disagrees
      with the preset raises ``ValueError``.
    * no preset: all three sizes must be given, or none of them, in which case
      ``gpt-mini`` is used.
    """
    explicit = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    if preset is not None:
        if preset not in TRANSFORMER_PRESETS:
            raise ValueError(
                f"unknown transformer preset {preset!r}; expected one of "
                f"{sorted(TRANSFORMER_PRESETS)}"
            )
        sizes = dict(zip(("n_layer", "n_head", "n_embd"), TRANSFORMER_PRESETS[preset]))
        for name, value in explicit.items():
            if value is not None and value != sizes[name]:
                raise ValueError(
                    f"preset {preset!r} has {name}={sizes[name]} but {name}={value} was "
                    "also given; pass either a preset or explicit sizes"
                )
        return sizes["n_layer"], sizes["n_head"], sizes["n_embd"]
    given = [k for k, v in explicit.items() if v is not None]
    if not given:
        return TRANSFORMER_PRESETS["gpt-mini"]
    if len(given) != 3:
        missing = sorted(set(explicit) - set(given))
        raise ValueError(
            f"without a preset, n_layer, n_head and n_embd must all be given; missing {missing}"
        )
    return int(n_layer), int(n_head), int(n_embd)  # type: ignore[arg-type]


def init_gpt_weights(module: nn.Module) -> None:
    """minGPT init for one module; use with ``model.apply(init_gpt_weights)``."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def scale_residual_projections(module: nn.Module, n_layer: int) -> None:
    """Re-init every ``*.c_proj.weight`` at N(0, 0.02/sqrt(2*n_layer)) (GPT-2 / minGPT)."""
    std = 0.02 / math.sqrt(2 * n_layer)
    for name, param in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(param, mean=0.0, std=std)


@dataclass
class KVCache:
    """Preallocated per-layer key/value buffers for incremental decoding.

    ``k`` and ``v`` have shape ``(n_layer, B, n_head, max_len, head_dim)``;
    ``length`` is the number of positions already written. Create one with
    :meth:`Transformer.make_cache`. A cache belongs to one sequence batch;
    call :meth:`reset` to reuse the memory for a new batch of the same size.
    """

    k: Tensor
    v: Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def reset(self) -> None:
        self.length = 0


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    ``causal`` selects GPT-style masking; with a cache the mask is aligned to
    the cache offset.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        causal: bool = True,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.causal = causal
        self.attn_pdrop = attn_pdrop
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(resid_pdrop)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        dropout_p = self.attn_pdrop if self.training else 0.0

        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=self.causal and T > 1
            )
        else:
            start = cache.length
            end = start + T
            cache.k[layer, :, :, start:end] = k.to(cache.k.dtype)
            cache.v[layer, :, :, start:end] = v.to(cache.v.dtype)
            keys = cache.k[layer, :, :, :end]
            values = cache.v[layer, :, :, :end]
            if keys.dtype != q.dtype:  # e.g. a float32 cache under bf16 autocast
                keys, values = keys.to(q.dtype), values.to(q.dtype)
            if not self.causal or T == 1:
                # One new query sees every cached key: no mask needed.
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout_p)
            elif start == 0:
                y = F.scaled_dot_product_attention(
                    q, keys, values, dropout_p=dropout_p, is_causal=True
                )
            else:
                rows = torch.arange(start, end, device=x.device).unsqueeze(1)
                cols = torch.arange(end, device=x.device).unsqueeze(0)
                y = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=cols <= rows, dropout_p=dropout_p
                )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """``Linear(C, 4C) -> GELU(tanh) -> Linear(4C, C) -> Dropout``."""

    def __init__(self, n_embd: int, resid_pdrop: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        causal: bool = True,
        attn_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, causal, attn_pdrop, resid_pdrop)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, resid_pdrop)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Stack of pre-LN blocks plus a final LayerNorm, on embeddings.

    Args:
        n_layer: number of blocks.
        n_head: attention heads per block (must divide ``n_embd``).
        n_embd: width of the residual stream.
        max_len: the longest sequence the model accepts (and the length a
            :class:`KVCache` is preallocated to by default).
        causal: GPT masking (``True``) or bidirectional attention (``False``).
        embd_pdrop: dropout applied to the input embeddings.
        resid_pdrop: dropout on each residual branch output.
        attn_pdrop: dropout on the attention probabilities.

    ``forward(x, cache=None)`` maps ``(B, T, n_embd) -> (B, T, n_embd)``. With a
    cache, ``x`` holds the *next* ``T`` positions after ``cache.length`` and
    the cache is advanced by ``T``.
    """

    def __init__(
        self,
        n_layer: int,
        n_head: int,
        n_embd: int,
        max_len: int,
        causal: bool = True,
        embd_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        attn_pdrop: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "max_len": max_len}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        drops = {"embd_pdrop": embd_pdrop, "resid_pdrop": resid_pdrop, "attn_pdrop": attn_pdrop}
        for name, p in drops.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.max_len = max_len
        self.causal = causal
        self.drop = nn.Dropout(embd_pdrop)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, causal, attn_pdrop, resid_pdrop) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.apply(init_gpt_weights)
        scale_residual_projections(self, n_layer)

    def make_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Allocate an empty :class:`KVCache` for ``batch_size`` sequences."""
        max_len = self.max_len if max_len is None else max_len
        if max_len > self.max_len:
            raise ValueError(f"cache max_len {max_len} exceeds the model's max_len {self.max_len}")
        ref = self.ln_f.weight
        shape = (self.n_layer, batch_size, self.n_head, max_len, self.n_embd // self.n_head)
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"expected embeddings of shape (B, T, {self.n_embd}), got {tuple(x.shape)}")
        T = x.shape[1]
        start = 0 if cache is None else cache.length
        limit = self.max_len if cache is None else cache.max_len
        if start + T > limit:
            raise ValueError(
                f"sequence of length {start + T} exceeds the maximum length {limit}"
            )
        if cache is not None and cache.batch_size != x.shape[0]:
            raise ValueError(
                f"cache was built for batch size {cache.batch_size}, got {x.shape[0]}"
            )
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length = start + T
        return self.ln_f(x)
