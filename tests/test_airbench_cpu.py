"""The CPU stand-ins of ``scripts/airbench_reference.py --cpu`` (airbench94 without a GPU).

The stand-ins patch torch process-wide, so they are checked in a child process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

CHILD = """
import sys, time, types
sys.path.insert(0, {scripts!r})
import torch
import airbench_reference as ar

ar.use_cpu()
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
net = net.half().cuda()
assert net[0].weight.dtype == torch.float32, net[0].weight.dtype
assert torch.ones(2, dtype=torch.uint8).half().dtype == torch.float32
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record(); time.sleep(0.05); end.record(); torch.cuda.synchronize()
assert 40 <= start.elapsed_time(end) < 5000, start.elapsed_time(end)

import torchvision.transforms as T
mean, std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.2470, 0.2435, 0.2616))
x = torch.rand(5, 3, 4, 4)
want = (x - mean[:, None, None]) / std[:, None, None]
assert torch.allclose(T.Normalize(mean, std)(x), want)

class CifarLoader:
    def __init__(self, path, train=True, batch_size=500, aug=None, gpu=0):
        self.device = torch.device(gpu)

module = types.ModuleType("airbench94")
module.CifarLoader = CifarLoader
ar.loader_on_cpu(module)
assert module.CifarLoader("cifar10").device == torch.device("cpu")
print("ok")
"""


def test_cpu_stand_ins_give_float32_wall_clock_and_cpu_loading():
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(scripts=str(SCRIPTS))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
