"""Test settings: one intra-op thread (small tensors; no oversubscription on 2 cores)."""

import torch

torch.set_num_threads(1)
