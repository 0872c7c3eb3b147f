"""Lightning's FSDP strategy set up for vqzoo's transformer priors (LlamaGen-scale: hundreds of millions of parameters).

:class:`PriorFSDPStrategy` is ``lightning.pytorch.strategies.FSDPStrategy``
with the choices a transformer prior needs, so a config names it without
Python class sets (which YAML cannot write):

* ``auto_wrap_policy``: each :class:`~vqzoo.nn.transformer.Block` is its own
  FSDP unit (its parameters are gathered just before it runs and freed after);
  embeddings, the final norm and the head sit in the root unit.
* ``activation_checkpointing``: recompute each Block's activations in the
  backward pass (less memory, ~1/3 more compute); on by default.
* ``sharding_strategy``: ``FULL_SHARD`` (ZeRO-3) by default; ``SHARD_GRAD_OP``
  keeps the weights gathered between forward and backward (faster, more memory),
  ``HYBRID_SHARD`` shards within a node and replicates across nodes.
* ``state_dict_type: full``: checkpoints are ordinary full state dicts, so
  ``vqzoo.load``, ``export`` and sampling read them as any other.

Use with ``precision: bf16-mixed``; the README's cluster section shows the
trainer config (``strategy`` with this class path and its ``init_args``).

The tokenizers keep DDP: they are small, and their GAN step's two optimizers
and codebook collectives are written for it.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy

from vqzoo.nn.transformer import Block

__all__ = ["PriorFSDPStrategy"]


class PriorFSDPStrategy(FSDPStrategy):
    """FSDP with one unit per transformer :class:`~vqzoo.nn.transformer.Block` (see the module docstring)."""

    strategy_name = "vqzoo_prior_fsdp"

    def __init__(
        self,
        activation_checkpointing: bool = True,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type="full",
            **kwargs,
        )
