"""The frozen conversion plan: what the search chose for every spiking layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onespike.errors import OptionError

#: How the network input is sent: ``analog`` (a current into the first layer),
#: ``binary`` (the multi-spike base-2 code of :mod:`onespike.codes.binary`) or
#: ``single`` (the single-spike phase code of the hidden layers).
INPUT_CODINGS = ("analog", "binary", "single")

#: The kinds of spiking layer (:attr:`LayerPlan.kind`), the roles of
#: :data:`onespike.trace.SPIKING`.
LAYER_KINDS = ("relu", "signed", "softmax")


def check_input_coding(coding: object) -> str:
    """The input coding named by a user: one of :data:`INPUT_CODINGS`."""
    if coding not in INPUT_CODINGS:
        raise OptionError(f"input_coding must be one of {INPUT_CODINGS}, got {coding!r}")
    return coding  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerPlan:
    """Code parameters and calibration figures of one spiking layer.

    ``scale`` is in the layer's activation units (a float, or one per channel);
    ``act_error`` is the relative squared error ``|q - a|^2 / |a|^2`` of the
    layer's activation ``a`` and its code ``q`` on the calibration data (inputs
    from the converted network); ``out_error`` is the search objective reached
    (relative squared error where the layer's spikes arrive: the next layers'
    pre-activations or the logits, or the activation itself for
    ``objective="activation"``).

    ``phases`` is the layer's own window ``T_l`` (steps; the plan's ``phases`` unless
    the network was converted with per-layer ``windows``). ``fire_window`` counts the
    windows before the one the layer fires in (1 for a layer fed by the input); its
    fire window starts at step ``fire_window * T`` when every window is ``T``
    (:func:`onespike.calibrate.fire_steps` gives the start step in general).

    ``kind`` (issue 27): ``"relu"`` (phase neurons, a ReLU of the ANN), ``"signed"``
    (signed neurons, one spike of either sign: :mod:`onespike.codes.signed`; ``scale``
    codes ``|x|``) or ``"softmax"`` (exponential neurons of a softmax by spike timing:
    :mod:`onespike.codes.softmax`; ``scale`` is 1, the row maximum's value).
    """

    name: str
    neurons: int
    scale: float | tuple[float, ...]
    base: float
    phases: int
    threshold_shift: bool
    act_error: float
    out_error: float
    fire_window: int = 0
    kind: str = "relu"

    @property
    def scale_summary(self) -> str:
        if isinstance(self.scale, tuple):
            lo, hi = min(self.scale), max(self.scale)
            return f"{lo:.3g}..{hi:.3g} ({len(self.scale)} ch)"
        return f"{self.scale:.4g}"


@dataclass(frozen=True)
class Plan:
    """Everything needed to build the spiking network from the traced graph."""

    phases: int
    input_coding: str
    layers: tuple[LayerPlan, ...]
    input: LayerPlan | None = None
    latency_steps: int = 0
    search: dict = field(default_factory=dict)
    #: The analog input's window in steps when it is not ``phases`` (None: ``phases``).
    #: An analog input is a constant current into the first layers; its window only
    #: sets how many steps that current is integrated over (``W x / T_in`` per step),
    #: so one step delivers ``W x`` exactly. ``windows="auto"`` uses 1 and spends the
    #: steps saved on the spiking layers; the latency counts it like any window.
    input_window: int | None = None

    @property
    def input_steps(self) -> int:
        """The input's window in steps: ``input_window``, or ``phases`` when None."""
        return self.phases if self.input_window is None else self.input_window

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(
            f"no spiking layer named {name!r}; layers: {[lp.name for lp in self.layers]}"
        )

    @property
    def windows(self) -> tuple[int, ...]:
        """Each spiking layer's window ``T_l`` (steps), in the order of ``layers``."""
        return tuple(lp.phases for lp in self.layers)

    @property
    def uniform(self) -> bool:
        """Whether every spiking layer's window is ``phases`` (no per-layer windows)."""
        return all(w == self.phases for w in self.windows)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [asdict(lp) for lp in self.layers]
        return d

    def table(self) -> str:
        rows = [("layer", "neurons", "scale", "base", "window", "fire win", "act err", "out err")]
        entries = ([self.input] if self.input is not None else []) + list(self.layers)
        for lp in entries:
            rows.append(
                (
                    lp.name if lp.kind == "relu" else f"{lp.name} ({lp.kind})",
                    str(lp.neurons),
                    lp.scale_summary,
                    f"{lp.base:.3f}",
                    str(lp.phases),
                    str(lp.fire_window),
                    f"{lp.act_error:.2e}",
                    f"{lp.out_error:.2e}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        per_layer = "" if self.uniform else " (per-layer windows: the column 'window')"
        in_win = "" if self.input_window is None else f" (window {self.input_window})"
        lines = [
            f"Plan: phases={self.phases}{per_layer}, input={self.input_coding}{in_win}, "
            f"latency={self.latency_steps} steps, search={self.search}"
        ]
        for j, r in enumerate(rows):
            lines.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
                )
            )
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each spiking layer's kind, in the order of ``layers``."""
        return tuple(lp.kind for lp in self.layers)
