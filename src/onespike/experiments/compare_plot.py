"""The comparison's figures: accuracy against steps and against spikes per neuron, and
the energy ratio against steps, one line per code (:mod:`onespike.experiments.compare`
makes the results they plot)."""

from __future__ import annotations

from pathlib import Path

from onespike._io import atomic_write

__all__ = ["plot"]

_ACCURACY_FIGURES = (
    ("steps", "latency (total time steps)", "accuracy_vs_steps"),
    ("spikes_per_neuron", "spikes per hidden neuron", "accuracy_vs_spikes"),
)


def plot(result: dict, out_dir: Path, prefix: str = "compare", title: str = "") -> list[Path]:
    """Three PNGs: accuracy vs steps, accuracy vs spikes per neuron, energy ratio vs steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    codes = result["codes"]
    style = _styles(codes)
    paths = []

    def save(fig, name: str) -> None:
        """Title, write ``{prefix}_{name}.png`` and close the figure."""
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        p = out_dir / f"{prefix}_{name}.png"
        atomic_write(p, lambda tmp: fig.savefig(tmp, dpi=80))
        plt.close(fig)
        paths.append(p)

    for xkey, xlabel, fname in _ACCURACY_FIGURES:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, zoom in zip(axes, (False, True)):
            _accuracy_axes(ax, result, style, xkey, xlabel, zoom)
        save(fig, fname)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _energy_axes(ax, result, style)
    save(fig, "energy")
    return paths


def _styles(codes: dict) -> dict[str, tuple[str, str, str]]:
    """``(colour, marker, line style)`` per code. The refined phase code: onespike's colour,
    dashed, its own marker (the others keep the colours and markers they have without it)."""
    plain = [name for name in codes if name != "onespike-refined"]
    first = 1 if "onespike-refined" in codes and "onespike" not in codes else 0  # C0: refined
    style = {name: (f"C{i}", "o^sDvP*X"[i % 8], "-") for i, name in enumerate(plain, first)}
    style["onespike-refined"] = ("C0", "h", "--")  # "h": no other code's marker
    return style


def _lines(ax, codes: dict, style: dict, xkey: str, ykey: str, floor: float | None = None) -> None:
    """One line per code with points; x values below ``floor`` drawn at it (log axes)."""
    for name, c in codes.items():
        pts = c["points"]
        if not pts:
            continue
        col, mk, ls = style[name]
        xs = [p[xkey] if floor is None else max(p[xkey], floor) for p in pts]
        ys = [p[ykey] for p in pts]
        lw = {"onespike": 2.2, "onespike-refined": 1.6}.get(name, 1.2)  # refined: over it
        ax.plot(xs, ys, marker=mk, ms=5 if mk == "h" else 4, color=col, lw=lw, ls=ls, label=name)


def _accuracy_axes(ax, result: dict, style: dict, xkey: str, xlabel: str, zoom: bool) -> None:
    """Accuracy against ``xkey`` with the ANN's line: the whole range, or (``zoom``) the
    3 points below the ANN, the 0.5-point band shaded."""
    ann, codes = result["ann_accuracy"], result["codes"]
    _lines(ax, codes, style, xkey, "accuracy", 1e-3 if xkey == "spikes_per_neuron" else None)
    ax.axhline(ann, color="k", ls="--", lw=1, label=f"ANN {ann:.2f} %")
    ax.set_xscale("log", base=2 if xkey == "steps" else 10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if zoom:
        top = max([ann + 0.6] + [p["accuracy"] + 0.2 for c in codes.values() for p in c["points"]])
        top = min(top, 100.2)
        ax.set_ylim(ann - 3.0, top)
        ax.axhspan(ann - 0.5, top, color="0.9", zorder=0)
        ax.set_title("zoom: shaded = within 0.5 points of the ANN", fontsize=9)
    else:
        ax.set_ylim(0, 100.5)
        ax.legend(fontsize=7, loc="lower right")


def _energy_axes(ax, result: dict, style: dict) -> None:
    """The compute energy ratio against steps, each code's 0.5-point mark circled."""
    _lines(ax, result["codes"], style, "steps", "energy_ratio_compute")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="ANN (ratio 1)")
    for row in result["summary"]:
        p = row["within_0.5"]
        if p is not None:
            ax.plot(p["steps"], p["energy_ratio_compute"], "o", ms=10, mfc="none", color="k")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("latency (total time steps)")
    ax.set_ylabel("energy ratio ANN / SNN (compute only)")
    ax.set_title("circles: from here on every longer run is within 0.5 points", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
