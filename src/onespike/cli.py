"""Command line: ``onespike demo``, ``convert``, ``evaluate``, ``export``, ``sweep``,
``ablation``, ``compare``.

Thin: it parses options and calls the library (and, for sweep, ablation and compare,
:mod:`onespike.experiments`). A user's mistake (a missing data file, an unsupported
layer, a bad option: any :class:`~onespike.errors.OnespikeError`) prints one line
starting with ``error:`` and exits with status 2; any other exception is a bug and
shows its traceback.

Under ``torchrun --nproc-per-node N -m onespike convert|evaluate|demo ...`` the process
group is made from torchrun's environment (:func:`onespike.distributed.init_from_env`:
gloo on CPU, NCCL with each rank on its GPU, a timeout so a dead rank makes the others
fail); every rank loads the same model and data and takes its shard; rank 0 prints and
writes the files, the others stay quiet (errors print on every rank that has one).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from pathlib import Path

from torch import nn

from onespike import distributed
from onespike._io import atomic_write, check_output, make_output_folder, write_json
from onespike._version import __version__
from onespike.calibrate import OBJECTIVES, SEARCH_PRESETS, SearchConfig
from onespike.convert import convert
from onespike.data import DATASETS, SUBSETS, calibration_set, load_dataset, subset_indices
from onespike.errors import (
    OnespikeError,
    OptionError,
    OutputError,
    check_phase_bound,
    report_error,
)
from onespike.evaluate import EvalResult, evaluate
from onespike.models import load_user_model, resolve_model
from onespike.network import SpikingNetwork
from onespike.nir_export import export_nir, require_nir
from onespike.plan import INPUT_CODINGS, check_input_coding
from onespike.refine import LOSSES
from onespike.serialize import load, save
from onespike.trace import SIGNED_SITES

__all__ = [
    "DATASETS",
    "build_parser",
    "calibration_set",
    "load_dataset",
    "load_user_model",
    "main",
    "resolve_model",
    "summary",
]


class _Parser(argparse.ArgumentParser):
    """Argument mistakes become an :class:`~onespike.errors.OptionError`: one ``error:``
    line, status 2."""

    def error(self, message: str):  # type: ignore[override]
        raise OptionError(f"{message} (see {self.prog} --help)")


def _input_coding(s: str) -> str:
    """An argparse type: one of the input codings."""
    try:
        return check_input_coding(s)
    except OptionError:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {s!r} (choose from {', '.join(INPUT_CODINGS)})"
        ) from None


def _windows(s: str) -> str | list[int]:
    """An argparse type: ``auto`` or one window per spiking layer, comma-separated."""
    if s == "auto":
        return s
    try:
        ws = [int(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or integers >= 1 separated by commas (one per spiking layer), "
            f"got {s!r}"
        ) from None
    if any(w < 1 for w in ws):
        raise argparse.ArgumentTypeError(f"every window must be an integer >= 1, got {s!r}")
    return ws


def _count(s: str) -> int:
    """An argparse type: an integer >= 1 (phases, image counts, steps)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _phase_list(s: str) -> list[int]:
    """An argparse type: comma-separated windows, each an integer >= 1 (``4,6,8``)."""
    return [_count(t.strip()) for t in s.split(",") if t.strip()] or [_count(s)]


def _parse_base(s: str) -> str | float | list[float]:
    if s in ("auto", "global"):
        return s
    try:
        vals = [float(v) for v in s.split(",")]
    except ValueError:
        raise OptionError(f"--base must be auto, global, a number or a list, got {s!r}") from None
    return vals[0] if len(vals) == 1 else vals


def _parse_scale(s: str) -> str | float:
    if s in ("auto", "max"):
        return s
    try:
        return float(s)
    except ValueError:
        raise OptionError(f"--scale must be auto, max or a percentile, got {s!r}") from None


def summary(name: str, snn: SpikingNetwork, res: EvalResult, seconds: float) -> str:
    """The one table the demo and convert print."""
    c = res.cost.totals if res.cost is not None else {}
    lines = [f"== onespike: {name}, {res.samples} test images =="]
    if res.ann_accuracy is not None:
        lines.append(f"ANN accuracy              {res.ann_accuracy:8.2f} %")
    lines.append(f"SNN accuracy (event path) {res.snn_accuracy:8.2f} %")
    if res.step_accuracy is not None:
        lines += [
            f"SNN accuracy (step path)  {res.step_accuracy:8.2f} %",
            f"step == event predictions {res.step_event_same_predictions} / {res.samples}",
            f"spike-phase agreement     {100 * res.phase_agreement:10.4f} % "
            f"({res.phase_mismatches} neuron(s) differ: float ties at a threshold)",
        ]
    if res.loss is not None:
        lines.append(f"loss                      {res.loss:+8.2f} points")
    lines += [
        f"phases T                  {snn.phases:8d}",
        f"latency                   {snn.plan.latency_steps:8d} steps",
    ]
    if not snn.plan.uniform:
        lines.append(f"windows per layer         {','.join(map(str, snn.plan.windows))}")
    if c:
        lines += [
            f"spikes per neuron         {c['spikes_per_neuron_mean']:8.3f} mean, "
            f"{c['spikes_per_neuron_max']} max",
            f"ANN MACs / inference      {c['ann_macs']:12,.0f} (the folded ANN's graph)",
            f"SNN ACs / MACs            {c['snn_acs']:12,.0f} / {c['snn_macs']:,.0f}",
            f"energy ratio ANN/SNN      {c['energy_ratio_compute']:8.2f}x compute only, "
            f"{c['energy_ratio_total']:.2f}x with memory access",
        ]
    lines += ["", str(snn.plan)]
    if res.cost is not None:
        lines += ["", res.cost.table()]
    lines.append(f"\n(total {seconds:.0f} s)")
    return "\n".join(lines)


def _check_out(path: str | None, flag: str = "--out") -> None:
    """Refuse an output file that cannot be written (a folder, a missing folder, a folder
    without write permission, a FIFO), before any work (:func:`onespike._io.check_output`)."""
    if path is not None:
        check_output(path, flag, error=OptionError)


#: Image formats ``--plot`` writes (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output option of the command (``--out``, ``--nir``, ``--json``, ``--plot``)
    checked before any work: one ``error:`` line instead of a traceback after it; so are
    the windows (``--phases``, ``--step-phases``: at most ``MAX_PHASES``)."""
    for flag in ("phases", "step_phases"):
        value = getattr(args, flag, None)
        for t in value if isinstance(value, list) else [value] if value is not None else []:
            check_phase_bound(t, f"--{flag.replace('_', '-')}")
    if args.cmd == "compare":  # its --out is a folder: made here, before any work
        make_output_folder(args.out, "--out")
        return
    for flag in ("out", "nir", "json", "plot"):
        path = getattr(args, flag, None)
        if isinstance(path, str):
            _check_out(path, f"--{flag}")
    plot = getattr(args, "plot", None)
    if isinstance(plot, str) and Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        raise OptionError(
            f"--plot {plot}: name the image file with one of {', '.join(PLOT_SUFFIXES)} "
            "(the format follows the suffix)"
        )


def _check_nir(path: str | None) -> None:
    """Refuse ``--nir`` before any work when the file cannot be written or the optional
    ``nir`` package is missing."""
    if path is None:
        return
    _check_out(path, "--nir")
    try:
        require_nir()
    except ImportError as e:
        raise OptionError(f"--nir {path}: {e}") from None


def _write_nir(snn: SpikingNetwork, path: str | None) -> None:
    if path and distributed.is_main():
        export_nir(snn, path)
        print(f"wrote the NIR graph to {path} (onespike.import_nir, onespike.nir_reference)")


def run_conversion(args: argparse.Namespace, model: nn.Module, name: str) -> int:
    t0 = time.time()
    _check_out(getattr(args, "out", None))
    _check_nir(getattr(args, "nir", None))
    xc, where = calibration_set(args.dataset, args.calibration, args.seed)
    distributed.print0(f"calibration: {where}", flush=True)
    device = distributed.local_device()
    if device is not None:  # NCCL: each rank converts on its own GPU
        model = model.to(device)
    snn = convert(
        model,
        xc,
        phases=args.phases,
        input_coding=args.input_coding,
        windows=getattr(args, "windows", None),
        signed=getattr(args, "signed", "operands"),
        **_search_kwargs(args),
    )
    if getattr(args, "finetune_epochs", None):  # with labels: the chosen data's training set
        from onespike.finetune import finetune

        xy = load_dataset(args.dataset, "train")
        snn = finetune(snn, model, xy, epochs=args.finetune_epochs)
    if getattr(args, "out", None) and distributed.is_main():
        save(snn, args.out)
        print(f"saved the network to {args.out} (onespike evaluate {args.out} --dataset ...)")
    _write_nir(snn, getattr(args, "nir", None))
    return _evaluate_and_report(args, model, snn, name, t0)


def _evaluate_and_report(
    args: argparse.Namespace, model: nn.Module | None, snn: SpikingNetwork, name: str, t0: float
) -> int:
    """Evaluate on the test set, print the summary, write ``--json``."""
    x, y = load_dataset(args.dataset, "test")
    if args.test is not None:
        idx = subset_indices(x.shape[0], args.test, args.subset)
        x, y = x[idx], y[idx]
    if tuple(x.shape[1:]) != snn.input_shape:
        raise OptionError(
            f"{args.dataset} images have shape {tuple(x.shape[1:])}, the network takes "
            f"{snn.input_shape}: choose the data set it was converted for"
        )
    res = evaluate(model, snn, x, y, batch_size=args.batch_size, step=not args.no_step)
    distributed.print0(summary(name, snn, res, time.time() - t0))
    if args.json and distributed.is_main():
        out = {"model": name, "dataset": args.dataset, "plan": snn.plan.to_dict(), **res.to_dict()}
        write_json(args.json, out)  # beside, then renamed: a full disk keeps the old file
        print(f"wrote {args.json}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``onespike evaluate FILE --dataset D``: a saved network, no ANN."""
    t0 = time.time()
    snn = load(args.file, device=distributed.local_device())
    return _evaluate_and_report(args, None, snn, str(args.file), t0)


def run_export(args: argparse.Namespace) -> int:
    """``onespike export FILE --nir OUT``: a saved network as a NIR graph, no ANN or data."""
    _check_nir(args.nir)
    snn = load(args.file)
    _write_nir(snn, args.nir)
    return 0


SUBSET_KW: dict = {
    "choices": SUBSETS,
    "default": "first",
    "help": "which test images --test / --step-images take: the first N, or a fixed "
    "random N (seed 0; use it for CIFAR-10, stored sorted by class)",
}


def _add_search_flags(p: argparse.ArgumentParser) -> None:
    """The search's options, shared by convert, demo and sweep (see :func:`_search_kwargs`).

    ``--search`` names a preset (:data:`onespike.calibrate.SEARCH_PRESETS`); the other
    flags change one of its fields, and a flag not given keeps the preset's value.
    """
    p.add_argument(
        "--search",
        choices=tuple(SEARCH_PRESETS),
        default="default",
        help="search preset (default: default; paper: the paper's per-layer search); "
        "the flags below change one of its settings",
    )
    p.add_argument("--base", default=None, help="auto | global | B | B1,B2,... per layer")
    p.add_argument("--scale", default=None, help="auto | max | percentile")
    p.add_argument("--objective", choices=OBJECTIVES, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--per-channel",
        dest="per_channel",
        action="store_const",
        const=True,
        default=None,
        help="one scale per channel in every layer (default: per channel for "
        "convolutions, per layer for Linear and graph layers)",
    )
    g.add_argument(
        "--per-layer",
        dest="per_channel",
        action="store_const",
        const=False,
        help="one scale per layer everywhere (the default before per-channel scales)",
    )
    p.add_argument(
        "--bias-correction",
        action="store_const",
        const=True,
        default=None,
        help="correct next layers' bias for code error",
    )
    p.add_argument(
        "--search-samples",
        type=int,
        default=None,
        help="score the search's candidates on the first N calibration images "
        "(default 256; 0 = all of them)",
    )
    p.add_argument(
        "--spike-tolerance",
        type=float,
        default=None,
        help="fewer spikes for a little error: each layer the fewest spikes among the "
        "candidates adding at most (1 + T) times the least error it can add (default 0)",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="after the search, fit weights and scales to the ANN's logits (onespike.refine)",
    )
    p.add_argument(
        "--refine-iterations", type=_count, default=None, help="refinement steps (default 600)"
    )
    p.add_argument(
        "--refine-budget", type=float, default=None, help="stop refining after N seconds"
    )
    p.add_argument("--refine-loss", choices=LOSSES, default=None, help="kl (default) | mse")


def _search_config(args: argparse.Namespace) -> SearchConfig:
    """The :class:`~onespike.calibrate.SearchConfig` of ``--search`` and the flags that
    change it (:func:`_add_search_flags`; ``--no-threshold-shift`` where the command has it)."""
    changes = {
        "base": None if args.base is None else _parse_base(args.base),
        "scale": None if args.scale is None else _parse_scale(args.scale),
        "objective": args.objective,
        "per_channel": args.per_channel,
        "bias_correction": args.bias_correction,
        "spike_tolerance": args.spike_tolerance,
        "threshold_shift": False if getattr(args, "no_threshold_shift", False) else None,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.search_samples is not None:
        changes["search_samples"] = args.search_samples or None
    return SearchConfig.preset(args.search).replace(**changes)


def _search_kwargs(args: argparse.Namespace) -> dict:
    """``onespike.convert`` keyword arguments from the flags of :func:`_add_search_flags`."""
    return {"search": _search_config(args), "refine": _refine_arg(args)}


def _refine_arg(args: argparse.Namespace) -> bool | dict:
    """``convert(refine=...)`` from ``--refine`` and its ``--refine-*`` options."""
    extra = {
        "iterations": args.refine_iterations,
        "time_budget": args.refine_budget,
        "loss": args.refine_loss,
    }
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra and not args.refine:
        raise OptionError("--refine-iterations, --refine-budget and --refine-loss need --refine")
    return (extra or True) if args.refine else False


def _add_common(p: argparse.ArgumentParser, dataset: bool) -> None:
    if dataset:
        p.add_argument(
            "--dataset",
            choices=DATASETS,
            default=None,
            help="data set (default: a shipped model's own; mnist for package.module:function)",
        )
    p.add_argument("--phases", type=_count, default=8, help="window T in steps (default 8)")
    p.add_argument(
        "--input-coding",
        type=_input_coding,
        default="analog",
        metavar="{" + ",".join(INPUT_CODINGS) + "}",
        help="how the input is sent (default analog; binary: multi-spike base-2 code; "
        "single: single-spike phase code)",
    )
    p.add_argument("--no-threshold-shift", action="store_true", help="floor instead of rounding")
    _add_search_flags(p)
    p.add_argument("--calibration", type=_count, default=1000, help="calibration images")
    p.add_argument("--test", type=_count, default=None, help="only N test images (see --subset)")
    p.add_argument("--subset", **SUBSET_KW)
    p.add_argument("--batch-size", type=_count, default=500)
    p.add_argument("--no-step", action="store_true", help="skip the step simulator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures to this JSON file")


def _each_model(args: argparse.Namespace):
    """For every ``--model``: (spec, model, dataset, calibration, test x, test y)."""
    for spec in args.model:
        model, dataset = _resolve_model(spec, args.dataset)
        xc, where = calibration_set(dataset, args.calibration, args.seed)
        print(f"{spec}: calibration {where}", flush=True)
        x, y = load_dataset(dataset, "test")
        if args.test is not None:
            idx = subset_indices(x.shape[0], args.test, args.subset)
            x, y = x[idx], y[idx]
        yield spec, model, dataset, xc, x, y


def run_sweep(args: argparse.Namespace) -> int:
    from onespike.experiments.sweep import plot, sweep_model, table

    phases = args.phases
    results = []
    for spec, model, dataset, xc, x, y in _each_model(args):
        results.append(
            sweep_model(
                spec,
                model,
                dataset,
                xc,
                x,
                y,
                phases,
                step_phases=args.step_phases,
                step_indices=subset_indices(x.shape[0], args.step_images, args.subset),
                cost_indices=None
                if args.cost_images is None
                else subset_indices(x.shape[0], args.cost_images, args.subset),
                convert_kwargs=_search_kwargs(args),
                batch_size=args.batch_size,
            )
        )
    print(table(results))
    if args.json:  # written beside, then renamed (as every output): see onespike._io
        write_json(args.json, [r.to_dict() for r in results])
    if args.plot:
        atomic_write(args.plot, lambda tmp: plot(results, tmp))
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    from onespike.experiments.sweep import (
        ABLATIONS,
        REFINE_ABLATIONS,
        ablate,
        ablation_table,
        saved_ablation,
    )

    variants = {**ABLATIONS, **REFINE_ABLATIONS} if args.refine else ABLATIONS
    if args.refine_only:
        variants = REFINE_ABLATIONS
    phases = args.phases
    results = []

    def save(partial: dict | None = None) -> None:
        if args.json:
            done = results if partial is None else [*results, partial]
            write_json(args.json, done)

    saved = saved_ablation(args.json) if args.resume and args.json else {}
    for spec, model, _, xc, x, y in _each_model(args):
        results.append(
            ablate(
                spec,
                model,
                xc,
                x,
                y,
                phases,
                variants=variants,
                batch_size=args.batch_size,
                on_row=save,
                done=saved.get(spec),
            )
        )
    print(ablation_table(results))
    save()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onespike", description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--version", action="version", version=f"onespike {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="convert the shipped MNIST CNN and print its figures")
    _add_common(d, dataset=False)
    from onespike.experiments.compare import add_arguments as _compare_arguments

    _compare_arguments(
        sub.add_parser("compare", help="onespike against other spike codes; JSON + PNG")
    )
    c = sub.add_parser("convert", help="convert a shipped model or yours (package.module:function)")
    c.add_argument(
        "--model",
        required=True,
        help="shipped model name (mnist_cnn, resnet20, vgg11_bn_w0.5, ...) or "
        "package.module:function returning the ANN",
    )
    _add_common(c, dataset=True)
    c.add_argument(
        "--windows",
        type=_windows,
        default=None,
        help="per-layer windows: 'auto' (chosen by measured sensitivity, latency at most "
        "the uniform --phases network's) or one integer per spiking layer, e.g. 3,4,2",
    )
    c.add_argument(
        "--signed",
        choices=SIGNED_SITES,
        default="operands",
        help="transformers: where signed neurons go (default operands: attention's q, k, v; "
        "inputs: also the residual stream and attention's output, so Linears read spikes)",
    )
    c.add_argument(
        "--finetune-epochs",
        type=_count,
        default=None,
        help="then fine-tune N epochs with labels on the data set's training split "
        "(onespike.finetune: cross-entropy + distillation)",
    )
    c.add_argument(
        "--out", default=None, help="save the converted network to this file (onespike.save)"
    )
    c.add_argument(
        "--nir",
        default=None,
        help="also write it as a NIR graph (onespike.export_nir; needs onespike[nir])",
    )
    e = sub.add_parser("evaluate", help="evaluate a network saved by convert --out (no ANN needed)")
    e.add_argument("file", help="a network file written by onespike.save / convert --out")
    e.add_argument("--dataset", choices=DATASETS, required=True, help="the test set")
    e.add_argument(
        "--images",
        "--test",
        dest="test",
        type=_count,
        default=None,
        help="only N test images (see --subset)",
    )
    e.add_argument("--subset", **SUBSET_KW)
    e.add_argument("--batch-size", type=_count, default=500)
    e.add_argument("--no-step", action="store_true", help="skip the step simulator")
    e.add_argument("--json", default=None, help="write the figures to this JSON file")
    x = sub.add_parser("export", help="write a network saved by convert --out as a NIR graph")
    x.add_argument("file", help="a network file written by onespike.save / convert --out")
    x.add_argument("--nir", required=True, help="the NIR file to write (HDF5; needs onespike[nir])")
    s = sub.add_parser("sweep", help="accuracy, spikes and energy over phases; JSON + PNG")
    s.add_argument(
        "--model",
        action="append",
        required=True,
        help="shipped model name or package.module:function (repeatable)",
    )
    s.add_argument("--dataset", choices=DATASETS, default=None)
    s.add_argument("--phases", type=_phase_list, default=[4, 6, 8, 12, 16, 24, 32])
    _add_search_flags(s)
    s.add_argument("--calibration", type=_count, default=1000)
    s.add_argument("--test", type=_count, default=None)
    s.add_argument("--batch-size", type=_count, default=500)
    s.add_argument("--step-phases", type=_count, default=8, help="run the step simulator at this T")
    s.add_argument("--step-images", type=_count, default=1000)
    s.add_argument(
        "--cost-images",
        type=_count,
        default=None,
        help="count operations, spikes and energy on N test images (default: all)",
    )
    s.add_argument("--subset", **SUBSET_KW)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None)
    s.add_argument("--plot", default=None, help="PNG file")
    a = sub.add_parser("ablation", help="loss of each search variant at a few phases")
    a.add_argument("--model", action="append", required=True)
    a.add_argument("--dataset", choices=DATASETS, default=None)
    a.add_argument("--phases", type=_phase_list, default=[6, 8, 12])
    a.add_argument("--calibration", type=_count, default=1000)
    a.add_argument("--test", type=_count, default=None)
    a.add_argument("--subset", **SUBSET_KW)
    a.add_argument("--batch-size", type=_count, default=500)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--refine", action="store_true", help="add rows for the learned refinement (KL, MSE)"
    )
    a.add_argument(
        "--refine-only", action="store_true", help="only the default search and its refinements"
    )
    a.add_argument("--json", default=None)
    a.add_argument(
        "--resume",
        action="store_true",
        help="keep the variants a stopped run finished in --json (same model, phases, test "
        "images) and run the rest",
    )
    return p


def _resolve_model(spec: str, dataset: str | None) -> tuple[nn.Module, str]:
    """:func:`resolve_model`, with a user's ``package.module:function`` that needs
    arguments or raises reported as one :class:`OptionError` naming the function (its
    own traceback: call it in Python)."""
    if ":" not in spec:
        return resolve_model(spec, dataset)
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name, None)
    except ImportError:
        fn = None  # resolve_model says what is missing
    except Exception as e:  # the user's module fails on import
        raise OptionError(
            f"--model {spec}: importing {mod_name} raised {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0]}"
        ) from None
    if callable(fn):
        try:
            inspect.signature(fn).bind()
        except TypeError:
            raise OptionError(
                f"--model {spec}: {fn_name}{inspect.signature(fn)} needs arguments; --model "
                "takes a function called with none (wrap it: def make(): return ...)"
            ) from None
        except ValueError:  # no signature (a builtin): let the call decide
            pass
    try:
        return resolve_model(spec, dataset)
    except OnespikeError:
        raise
    except Exception as e:  # the user's function raised
        raise OptionError(
            f"--model {spec}: {fn_name}() raised {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0]} (call it in Python to see its traceback)"
        ) from None


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code."""
    _check_outputs(args)  # every output path, before any work
    if args.cmd == "demo":
        from onespike.models import load_pretrained

        args.dataset = "mnist"
        return run_conversion(args, load_pretrained("mnist_cnn"), "mnist_cnn (shipped)")
    if args.cmd == "compare":
        from onespike.experiments.compare import main as compare_main

        return compare_main(args)
    if args.cmd == "sweep":
        return run_sweep(args)
    if args.cmd == "ablation":
        return run_ablation(args)
    if args.cmd == "evaluate":
        return run_evaluate(args)
    if args.cmd == "export":
        return run_export(args)
    # a shipped name takes its data set from its sidecar; a user's model needs --dataset
    user = ":" in args.model
    model, args.dataset = _resolve_model(args.model, args.dataset or ("mnist" if user else None))
    return run_conversion(args, model, args.model)


def main(argv: list[str] | None = None) -> int:
    made_group = finished = False
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("demo", "convert", "evaluate"):
            made_group = distributed.init_from_env()
        elif distributed.launched():
            raise OptionError(
                f"onespike {args.cmd} runs in one process: launch it without torchrun "
                "(convert, evaluate and demo run on several)"
            )
        code = _run(args)
        finished = code == 0  # every rank got here: they may meet at a barrier
        return code
    except OnespikeError as e:  # a user's mistake; anything else is a bug: its traceback shows
        return _report_on_ranks(e)
    finally:
        if made_group:
            distributed.close(synchronize=finished)


def _report_on_ranks(e: OnespikeError) -> int:
    """Report a user's mistake once under torchrun. A wrong option or output path is found
    by every rank alike (they parse the same arguments and check the same paths): rank 0
    says it and the others exit quietly with the same status. Any other mistake can be one
    rank's alone (its shard of the data): every rank that meets it says so, with its rank."""
    if not distributed.launched():
        return report_error(e)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return report_error(e)
    if isinstance(e, (OptionError, OutputError)):
        return 2
    print(f"error (rank {rank}): {str(e).strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
