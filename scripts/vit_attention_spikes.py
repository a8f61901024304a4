"""Issue 27: what spiking attention alone costs a trained vit_tiny on MNIST.

Every attention of the model runs on spikes, by onespike.codes' pure functions: q, k and v
as signed single-spike neurons (one scale per tensor, the 99.9th percentile of |value| on
the calibration images, and a base per tensor searched on them), q @ k^T by traces, the
softmax by spike timing with its own searched base, attention @ v by traces and one
division. Everything else (patch embedding, MLPs, residual stream, head) stays float: the
figure isolates the attention's share of a conversion's loss. With --relu the MLPs' ReLU
layers are coded too (phase code, the same crude per-tensor scale and searched base).

    python scripts/vit_attention_spikes.py --weights checkpoints/new/vit_tiny.pt \
        --phases 8 12 16 --calibration 512
"""

from __future__ import annotations

import argparse
import json
import types

import torch

from onespike.codes import phase as pc
from onespike.codes import signed
from onespike.codes import softmax as sm
from onespike.data import load_mnist
from onespike.models import vit_tiny
from onespike.models.weights import load_state_dict_file

BASES = sm.BASES


def _heads(attn, x):
    qkv = attn.qkv(x)
    b, n, c3 = qkv.shape
    c = c3 // 3
    q, k, v = (
        t.reshape(b, n, attn.heads, c // attn.heads).transpose(1, 2) for t in qkv.chunk(3, -1)
    )
    return q, k, v, (b, n, c)


def _search(t: torch.Tensor, phases: int) -> tuple[float, float]:
    """(scale, base) of a signed layer: 99.9th percentile scale, base by least MSE."""
    a = t.abs().flatten()
    a = a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
    scale = float(torch.quantile(a, 0.999))
    errs = {
        b: float((signed.quantize_signed(t, scale, b, phases) - t).pow(2).mean()) for b in BASES
    }
    return scale, min(errs, key=errs.get)


def calibrate(model, x, phases):
    """Per block: the (scale, base) of q, k, v, the softmax's base and the (scale, base)
    of the MLP's ReLU layer, each on float activations."""
    params = []
    h = model.embed(x).flatten(2).transpose(1, 2) + model.pos
    for blk in model.blocks:
        attn = blk.attn
        u = blk.norm1(h.transpose(1, 2)).transpose(1, 2)
        q, k, v, _ = _heads(attn, u)
        p = {name: _search(t, phases) for name, t in (("q", q), ("k", k), ("v", v))}
        qq = signed.quantize_signed(q, *p["q"], phases)
        kq = signed.quantize_signed(k, *p["k"], phases)
        p["softmax"] = sm.search_base(qq @ kq.transpose(-2, -1) * attn.scale, phases)[0]
        h = h + attn(u)
        r = blk.relu(blk.fc1(blk.norm2(h.transpose(1, 2)).transpose(1, 2)))
        p["relu"] = _search(r, phases)  # the MLP's ReLU layer (phase code, positive)
        params.append(p)
        h = h + blk.fc2(r)
    return params


def spiking_forward(p, phases):
    def forward(attn, x):
        q, k, v, (b, n, c) = _heads(attn, x)
        coded = {}  # decoded spikes; the event form equals the trace form (tests)
        for name, t in (("q", q), ("k", k), ("v", v)):
            scale, base = p[name]
            phase, sign = signed.encode_signed(t, scale, base, phases)
            coded[name] = signed.decode_signed(phase, sign, base, t.new_tensor(scale))
        qv, kv, vv = coded["q"], coded["k"], coded["v"]
        scores = signed.event_matmul(qv, kv.transpose(-2, -1)) * attn.scale
        out = sm.spike_attention(scores, vv, p["softmax"], phases)
        return attn.proj(out.transpose(1, 2).reshape(b, n, c))

    return forward


def _relu_code(scale, base, phases):
    return lambda x: pc.quantize(x, scale, base, phases)  # ReLU then the phase code


def accuracy(model, x, y, batch=1000):
    with torch.no_grad():
        return (
            100.0
            * sum(
                int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
                for i in range(0, len(x), batch)
            )
            / len(x)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--phases", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--relu", action="store_true", help="also code the MLP ReLU layers (crude, rest float)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = vit_tiny()
    if args.weights.endswith(".ckpt"):  # a training checkpoint (onespike.experiments.train)
        state = torch.load(args.weights, map_location="cpu", weights_only=False)["model"]
    else:
        state = load_state_dict_file(args.weights)
    model.load_state_dict(state)
    model.eval()
    x_te, y_te = load_mnist("test")
    x_tr, _ = load_mnist("train")
    g = torch.Generator().manual_seed(args.seed)
    cal = x_tr[torch.randperm(len(x_tr), generator=g)[: args.calibration]]
    ann = accuracy(model, x_te, y_te)
    rows = {"ann": ann, "phases": {}}
    print(f"ANN {ann:.2f} %")
    originals = [(blk.attn.forward, blk.relu.forward) for blk in model.blocks]
    for T in args.phases:
        with torch.no_grad():
            params = calibrate(model, cal, T)
        row = {"params": params}
        for mode in ("attention", "attention+relu") if args.relu else ("attention",):
            for blk, p in zip(model.blocks, params):
                blk.attn.forward = types.MethodType(spiking_forward(p, T), blk.attn)
                if mode == "attention+relu":
                    blk.relu.forward = _relu_code(*p["relu"], T)
            acc = accuracy(model, x_te, y_te)
            for blk, (fa, fr) in zip(model.blocks, originals):
                blk.attn.forward, blk.relu.forward = fa, fr
            row[mode] = {"accuracy": acc, "loss": ann - acc}
            print(f"T = {T}, {mode} on spikes: {acc:.2f} % (loss {ann - acc:+.2f})")
        rows["phases"][T] = row
        bases = [(p["q"][1], p["k"][1], p["v"][1], p["softmax"], p["relu"][1]) for p in params]
        print(f"  bases q/k/v/softmax/relu per block: {bases}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
