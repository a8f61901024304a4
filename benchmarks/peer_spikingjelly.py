"""Peer benchmark: SpikingJelly's own ann2snn converter beside onespike, in one run.

    python benchmarks/peer_spikingjelly.py [--images 2000] [--modes max,99.9%]
        [--onespike-phases 4,8,16] [--max-steps 256] [--json FILE]

SpikingJelly is an optional dependency of this benchmark only (not of the
package or its tests). Without it the script says so and exits with status 0.
It converts the shipped MNIST CNN with SpikingJelly's rate-coding converter
(IF neurons, soft reset, scale from the max or a percentile of the
activations on the same 1,000 calibration images onespike uses), runs it for
up to ``--max-steps`` steps (one run; the accuracy after ``t`` steps is read at
t = 1, 2, 4, ..., the spikes of its IF nodes are counted), and prints its
accuracy, spikes per neuron and wall time beside onespike's at a few windows.

Differences to keep in mind when reading the figures (they are the peer's own
choices, kept as they are): SpikingJelly's percentile is taken over all
activations (zeros included), onespike's over the positive ones; SpikingJelly
max-pools spikes (a spike passes if any neuron of the window fired), while
onespike's rate code in ``onespike compare`` gates the pool by the neuron
that has sent the most. Spikes per neuron count the IF nodes' spikes divided
by their neurons, as ``onespike compare`` does for hidden layers.

Installing SpikingJelly: ``pip install spikingjelly`` pulls torchvision and a
torch of its own choosing. To keep the project's torch, install it without
dependencies into a separate folder, add the few pure-Python packages it
imports, and point ``PYTHONPATH`` there::

    pip install --no-deps --target /tmp/sj spikingjelly loguru
    pip install --target /tmp/sj requests
    PYTHONPATH=/tmp/sj python benchmarks/peer_spikingjelly.py
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from torch import nn

STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _import_spikingjelly():
    """``(ann2snn, functional, neuron, version)`` or ``None`` with a reason printed."""
    try:
        import spikingjelly
        from spikingjelly.activation_based import ann2snn, functional, neuron
    except ImportError as e:
        print(
            "SpikingJelly is not installed or cannot be imported here "
            f"({type(e).__name__}: {e}).\n"
            "This peer benchmark needs it; it is optional and nothing else in onespike uses it.\n"
            "Install it without touching torch (see this file's docstring), e.g.\n"
            "  pip install --no-deps --target /tmp/sj spikingjelly loguru && "
            "pip install --target /tmp/sj requests\n"
            "  PYTHONPATH=/tmp/sj python benchmarks/peer_spikingjelly.py\n"
            "Skipping."
        )
        return None
    try:
        from importlib.metadata import version

        ver = version("spikingjelly")
    except Exception:  # installed without metadata
        ver = getattr(spikingjelly, "__version__", "unknown")
    return ann2snn, functional, neuron, ver


def sj_convert(ann2snn, ann: nn.Module, xc: torch.Tensor, mode: str) -> nn.Module:
    """Convert with SpikingJelly's rate-coding converter (2.x recipe API or the older one)."""
    loader = [(xc, torch.zeros(xc.shape[0], dtype=torch.int64))]  # one batch: no momentum
    if hasattr(ann2snn, "RateCodingRecipe"):
        conv = ann2snn.Converter(recipe=ann2snn.RateCodingRecipe(dataloader=loader, mode=mode))
    else:  # spikingjelly 0.0.0.0.x
        conv = ann2snn.Converter(mode=mode, dataloader=loader)
    model = copy.deepcopy(ann)
    return conv.convert(model) if hasattr(conv, "convert") else conv(model)


@torch.no_grad()
def sj_run(functional, neuron, snn: nn.Module, x, y, max_steps: int, batch: int) -> dict:
    """Accuracy and spikes per neuron after t steps, for every t in STEPS up to max_steps."""
    ifs = [m for m in snn.modules() if isinstance(m, neuron.IFNode)]
    spikes = {id(m): 0.0 for m in ifs}
    neurons = {id(m): 0 for m in ifs}

    def hook(m, _inp, out):
        spikes[id(m)] += float(out.sum())
        neurons[id(m)] = out[0].numel()

    handles = [m.register_forward_hook(hook) for m in ifs]
    marks = [t for t in STEPS if t <= max_steps]
    correct = dict.fromkeys(marks, 0)
    spk_at = dict.fromkeys(marks, 0.0)
    t0 = time.perf_counter()
    try:
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i : i + batch], y[i : i + batch]
            functional.reset_net(snn)
            acc = None
            for t in range(1, marks[-1] + 1):
                out = snn(xb)
                acc = out if acc is None else acc + out
                if t in correct:
                    correct[t] += int((acc.argmax(1) == yb).sum())
                    spk_at[t] += sum(spikes.values())
            for k in spikes:
                spikes[k] = 0.0
    finally:
        for h in handles:
            h.remove()
    seconds = time.perf_counter() - t0
    n, hidden = x.shape[0], sum(neurons.values())
    return {
        "steps": marks,
        "accuracy": [100.0 * correct[t] / n for t in marks],
        "spikes_per_neuron": [spk_at[t] / n / hidden for t in marks],
        "hidden_neurons": hidden,
        "seconds": seconds,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="first N MNIST test images")
    p.add_argument("--modes", default="max,99.9%", help="SpikingJelly scale modes")
    p.add_argument("--onespike-phases", default="4,8,16")
    p.add_argument("--max-steps", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sj = _import_spikingjelly()
    if sj is None:
        return 0
    ann2snn, functional, neuron, version = sj

    import onespike
    from onespike.data import calibration_set, load_mnist
    from onespike.evaluate import evaluate
    from onespike.models import load_pretrained

    ann = load_pretrained("mnist_cnn")
    xc, where = calibration_set("mnist", 1000)
    x, y = load_mnist("test")
    x, y = x[: a.images], y[: a.images]
    with torch.no_grad():
        ann_acc = 100.0 * float((ann(x).argmax(1) == y).float().mean())
    print(f"SpikingJelly {version}; calibration: {where}; {x.shape[0]} test images")
    print(f"ANN accuracy {ann_acc:.2f} %\n")
    out: dict = {"images": int(x.shape[0]), "ann_accuracy": ann_acc, "spikingjelly": {}}
    out["spikingjelly_version"] = version
    from onespike.provenance import source_version

    out["onespike_source"] = source_version()
    out["torch"] = torch.__version__
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        snn = sj_convert(ann2snn, ann, xc, mode)
        conv_s = time.perf_counter() - t0
        r = sj_run(functional, neuron, snn, x, y, a.max_steps, a.batch_size)
        r["convert_seconds"] = conv_s
        out["spikingjelly"][mode] = r
        print(
            f"SpikingJelly ann2snn, mode {mode}: convert {conv_s:.1f} s, "
            f"run {r['seconds']:.1f} s ({r['steps'][-1]} steps, one run)"
        )
        print(f"  {'steps':>6s} {'acc %':>7s} {'spk/neuron':>10s}")
        for t, acc, s in zip(r["steps"], r["accuracy"], r["spikes_per_neuron"]):
            print(f"  {t:6d} {acc:7.2f} {s:10.3f}")
    out["onespike"] = []
    print("\nonespike (single-spike phase code)")
    print(
        f"  {'T':>4s} {'steps':>6s} {'acc %':>7s} {'spk/neuron':>10s} {'convert s':>9s} "
        f"{'run s':>6s}"
    )
    for T in (int(v) for v in a.onespike_phases.split(",")):
        t0 = time.perf_counter()
        snn = onespike.convert(ann, xc, phases=T, progress=False)
        conv_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = evaluate(ann, snn, x, y, batch_size=a.batch_size, step=False, progress=False)
        run_s = time.perf_counter() - t0
        spn = res.cost.totals["spikes_per_neuron_mean"]
        row = {
            "phases": T,
            "steps": snn.plan.latency_steps,
            "accuracy": res.snn_accuracy,
            "spikes_per_neuron": spn,
            "convert_seconds": conv_s,
            "run_seconds": run_s,
        }
        out["onespike"].append(row)
        print(
            f"  {T:4d} {row['steps']:6d} {res.snn_accuracy:7.2f} {spn:10.3f} {conv_s:9.1f} "
            f"{run_s:6.1f}"
        )
    print(
        "\n(wall times: this machine, torch threads = "
        f"{torch.get_num_threads()}; onespike's run time includes its cost accounting)"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
