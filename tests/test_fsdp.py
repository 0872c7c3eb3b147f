"""FSDP for large priors: vqzoo.priors.fsdp.PriorFSDPStrategy.

torch's FSDP refuses to run without an accelerator ("FSDP needs a non-CPU accelerator
device"), so on CPU these tests check what can be checked: the strategy's wrap and
activation-checkpointing policies pick exactly the transformer Blocks of a prior.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from vqzoo.nn.transformer import Block
from vqzoo.priors import MaskGIT, MiniGPT
from vqzoo.priors.fsdp import PriorFSDPStrategy


def test_strategy_wraps_and_checkpoints_each_block() -> None:
    s = PriorFSDPStrategy()
    policy = s.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert s.sharding_strategy.name == "FULL_SHARD" and s._state_dict_type == "full"
    assert s._activation_checkpointing_kwargs  # one checkpoint per Block
    assert PriorFSDPStrategy(activation_checkpointing=False)._activation_checkpointing_kwargs == {}
    assert PriorFSDPStrategy(sharding_strategy="HYBRID_SHARD").sharding_strategy.name == "HYBRID_SHARD"


@pytest.mark.parametrize("cls", [MiniGPT, MaskGIT])
def test_wrap_policy_selects_every_block_of_a_prior(cls: type) -> None:
    model = cls(vocab_size=16, token_shape=[2, 2], n_layer=3, n_head=2, n_embd=16)
    assert model.parameter_groups()[0]["params"]  # the optimizer's groups are built on the wrapped model the same way
    policy = PriorFSDPStrategy().kwargs["auto_wrap_policy"]
    chosen = policy._run_policy(model, set(), {})
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == 3
    assert set(chosen) == set(blocks)  # one unit per Block; the rest stays in the root unit FSDP adds
