"""Test-wide settings.

The tests use tiny tensors, where one torch thread is as fast as two, and two
threads sharing a busy core stall on each other (10x slower on a 2-core
machine running anything else). One thread keeps the suite's time predictable.
"""

import torch

torch.set_num_threads(1)
