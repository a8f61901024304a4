"""Where a conversion's loss comes from: each spiking layer coded alone, and each left exact.

For every window T (``--phases``) and calibration draw (``--seeds``) the shipped model is
converted (uniform windows, the default search; ``--bias-correction`` adds
``bias_correction=True``) and measured on the test set (event path): the whole SNN's loss
(ANN minus SNN accuracy, in points), then for every spiking layer ``l``:

- ``alone``: only ``l`` coded, every other layer computing the ANN's exact activation
  (``onespike.observe.activation_of``): the loss layer ``l``'s code causes by itself;
- ``exact``: every layer coded except ``l``: the loss left when ``l``'s code is perfect.
  The whole SNN's loss minus this is what making ``l`` exact would gain, interactions
  with the other layers' errors included.

Each row (one per T and draw) goes to ``--json``, rewritten after every row; rerunning
the same command skips the rows already there.

    python scripts/layer_sensitivity.py --model resnet20 --phases 8 --seeds 7,11 \\
        --test 2000 --threads 1 --json docs/results/sensitivity_resnet20_T8.json
    python scripts/layer_sensitivity.py --table docs/results/sensitivity_resnet20_T8.json
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import torch

import onespike
from onespike.evaluate import evaluate
from onespike.experiments.draws import (
    Rows,
    calibration_draw,
    draw_parser,
    grid,
    shipped_eval,
    table_or_run,
)
from onespike.observe import activation_of
from onespike.trace import spiking_caps


@contextlib.contextmanager
def exact_layers(snn: onespike.SpikingNetwork, names: set[str]) -> Iterator[None]:
    """Within the block, the spiking layers named in ``names`` compute the ANN's exact
    activation instead of their code (a clipped ReLU clipped at its bound, as in the ANN)."""
    caps = spiking_caps(snn.ann_graph)
    patched = [(layer, cap) for layer, cap in zip(snn.spikes.values(), caps) if layer.name in names]
    for layer, cap in patched:
        layer.forward = lambda pre, kind=layer.kind, cap=cap: activation_of(kind, pre, cap)
    try:
        yield
    finally:
        for layer, _ in patched:
            del layer.forward


def _loss(ann, snn, shipped, ann_acc: float) -> float:
    ev = evaluate(
        ann, snn, shipped.x, shipped.y, step=False, costs=False, progress=False,
        ann_accuracy=ann_acc,
    )  # fmt: skip
    return ev.loss


def run(args) -> int:
    torch.set_num_threads(args.threads)
    shipped = shipped_eval(args.model, args.test, 1)
    rows = Rows(args.json, {"bias_correction": args.bias_correction})
    bc = args.bias_correction
    for T, seed in grid(args):
        if rows.have(T, seed):
            continue
        xc, row = calibration_draw(args, shipped, T, seed)
        t0 = time.perf_counter()
        snn = onespike.convert(shipped.ann, xc, phases=T, progress=False, bias_correction=bc)
        ev = evaluate(
            shipped.ann, snn, shipped.x, shipped.y, step=False, costs=False, progress=False
        )
        names = snn.layer_names
        alone, exact = [], []
        for name in names:
            with exact_layers(snn, set(names) - {name}):
                alone.append(_loss(shipped.ann, snn, shipped, ev.ann_accuracy))
            with exact_layers(snn, {name}):
                exact.append(_loss(shipped.ann, snn, shipped, ev.ann_accuracy))
            print(f"  {name}: alone {alone[-1]:+.2f}, exact {exact[-1]:+.2f}", flush=True)
        row |= {
            "ann_accuracy": ev.ann_accuracy,
            "loss": ev.loss,
            "layers": names,
            "loss_alone": alone,
            "loss_exact": exact,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.add(row)
        print(f"{args.model} T={T} seed {seed}: loss {ev.loss:+.2f}", flush=True)
    print(table(rows.rows))
    return 0


def table(rows: list[dict]) -> str:
    """One column pair per row (T, draw): each layer's loss coded alone and left exact."""
    if not rows:
        return "(no rows)"
    heads = [
        f"T={r['phases']} seed {r['seed']}{' +bc' if r.get('bias_correction') else ''}"
        for r in rows
    ]
    out = ["| layer | " + " | ".join(f"{h}: alone | {h}: exact" for h in heads) + " |"]
    out.append("|---|" + "---|---|" * len(rows))
    out.append("| (whole SNN) | " + " | ".join(f"{r['loss']:+.2f} | " for r in rows) + " |")
    for i, name in enumerate(rows[0]["layers"]):
        cells = [f"{r['loss_alone'][i]:+.2f} | {r['loss_exact'][i]:+.2f}" for r in rows]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = draw_parser(__doc__, phases="8", threads=1)
    return table_or_run(p, argv, table, run)


if __name__ == "__main__":
    sys.exit(main())
