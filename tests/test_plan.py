"""plan.py: the frozen plan, its input codings, its table and its dict form."""

import json

import pytest

from onespike.errors import OptionError
from onespike.plan import INPUT_CODINGS, LayerPlan, Plan, check_input_coding


def _lp(name, scale=0.5, phases=4, fire_window=1, base=1.5):
    return LayerPlan(name, 12, scale, base, phases, True, 0.0125, 0.00031, fire_window)


PLAN = Plan(
    phases=4,
    input_coding="analog",
    layers=(_lp("relu1", (0.25, 2.0)), _lp("relu2", 0.75, fire_window=2)),
    latency_steps=12,
    search={"base": "auto"},
)


def test_input_codings():
    assert INPUT_CODINGS == ("analog", "binary", "single")
    for coding in INPUT_CODINGS:
        assert check_input_coding(coding) == coding
    for bad in ("phase", "rate", None, 1):
        with pytest.raises(OptionError, match=r"input_coding must be one of"):
            check_input_coding(bad)


def test_layers_by_name_and_windows():
    assert PLAN.layer("relu2") is PLAN.layers[1]
    with pytest.raises(KeyError, match=r"no spiking layer named 'relu9'; layers: \['relu1', "):
        PLAN.layer("relu9")
    assert PLAN.windows == (4, 4) and PLAN.uniform
    mixed = Plan(4, "analog", (_lp("a"), _lp("b", phases=6)))
    assert mixed.windows == (4, 6) and not mixed.uniform


def test_plans_are_frozen_and_compare_by_value():
    with pytest.raises(AttributeError):
        PLAN.phases = 5  # type: ignore[misc]
    same = Plan(4, "analog", (_lp("relu1", (0.25, 2.0)), _lp("relu2", 0.75, fire_window=2)),
                latency_steps=12, search={"base": "auto"})  # fmt: skip
    assert same == PLAN and same != Plan(4, "binary", PLAN.layers, latency_steps=12)


def test_to_dict_is_json_and_rebuilds_the_plan():
    d = json.loads(json.dumps(PLAN.to_dict()))
    assert d["layers"][0] == {
        "name": "relu1",
        "neurons": 12,
        "scale": [0.25, 2.0],
        "base": 1.5,
        "phases": 4,
        "threshold_shift": True,
        "act_error": 0.0125,
        "out_error": 0.00031,
        "fire_window": 1,
        "kind": "relu",
    }
    layers = tuple(
        LayerPlan(
            **{**lp, "scale": tuple(lp["scale"]) if isinstance(lp["scale"], list) else lp["scale"]}
        )
        for lp in d["layers"]
    )
    assert Plan(**{**d, "layers": layers}) == PLAN


def test_table():
    assert PLAN.layers[0].scale_summary == "0.25..2 (2 ch)"
    assert PLAN.layers[1].scale_summary == "0.75"
    assert str(PLAN).splitlines() == [
        "Plan: phases=4, input=analog, latency=12 steps, search={'base': 'auto'}",
        "layer  neurons           scale   base  window  fire win   act err   out err",
        "-----  -------  --------------  -----  ------  --------  --------  --------",
        "relu1       12  0.25..2 (2 ch)  1.500       4         1  1.25e-02  3.10e-04",
        "relu2       12            0.75  1.500       4         2  1.25e-02  3.10e-04",
    ]
    mixed = Plan(4, "analog", (_lp("a"), _lp("b", phases=6)))
    assert "(per-layer windows: the column 'window')" in str(mixed).splitlines()[0]
