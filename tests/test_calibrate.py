"""The search's configuration: SearchConfig, its presets, and how convert and the CLI use it."""

import json

import pytest
import torch

import onespike
import onespike.cli
from onespike import SEARCH_PRESETS, SearchConfig
from onespike.errors import OptionError
from tests.nets import make


@pytest.fixture(scope="module")
def x():
    return torch.rand(24, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def test_presets():
    assert SearchConfig.preset("default") == SearchConfig()
    paper = SearchConfig.preset("paper")
    assert paper == SearchConfig(objective="activation", per_channel=False)
    assert paper.changes() == {"objective": "activation", "per_channel": False}
    assert SearchConfig.of("paper") is paper and SearchConfig.of(paper) is paper
    assert set(SEARCH_PRESETS) == {"default", "paper"}
    with pytest.raises(OptionError, match="unknown search preset 'fast'"):
        SearchConfig.preset("fast")


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"base": "best"}, "base"),
        ({"base": 2.5}, "base"),
        ({"base": (1.5, 3.0)}, "base"),
        ({"scale": 0}, "scale"),
        ({"scale": "min"}, "scale"),
        ({"objective": "logits"}, "objective"),
        ({"per_channel": "yes"}, "per_channel"),
        ({"search_samples": 0}, "search_samples"),
        ({"threshold_shift": 1}, "threshold_shift"),
        ({"base": "global", "bias_correction": True}, "global"),
    ],
)
def test_every_field_is_checked(changes, msg):
    with pytest.raises(OptionError, match=msg):
        SearchConfig(**changes)
    with pytest.raises(OptionError, match=msg):
        SearchConfig().replace(**changes)


def test_values_are_normalised():
    cfg = SearchConfig(base=[1.5, 2], scale=99)
    assert cfg.base == (1.5, 2.0) and cfg.scale == 99.0
    assert hash(cfg) == hash(SearchConfig(base=(1.5, 2.0), scale=99.0))


def test_convert_with_a_preset_equals_its_keywords(x):
    model = make(4)
    by_name = onespike.convert(model, x, phases=5, search="paper", progress=False)
    by_keywords = onespike.convert(
        model, x, phases=5, objective="activation", per_channel=False, progress=False
    )
    assert by_name.plan == by_keywords.plan
    assert by_name.plan.search["objective"] == "activation"
    assert by_name.plan.search["per_channel"] is False
    # a keyword changes one field of the preset
    mixed = onespike.convert(
        model, x, phases=5, search=SearchConfig.preset("paper"), objective="next", progress=False
    )
    assert mixed.plan.search["objective"] == "next" and mixed.plan.search["per_channel"] is False
    assert mixed.plan != by_name.plan


def test_convert_rejects_a_bad_search(x):
    with pytest.raises(OptionError, match="unknown search preset"):
        onespike.convert(make(4), x, phases=5, search="quick", progress=False)


def test_the_ablation_starts_from_the_paper_preset():
    from onespike.experiments.sweep import ABLATIONS, REFINE_ABLATIONS, variant_config

    rows = list(ABLATIONS.values())
    assert variant_config(rows[0]) == (SearchConfig.preset("paper"), {})
    assert variant_config(rows[-1])[0].threshold_shift is False
    assert variant_config(REFINE_ABLATIONS["9 default + refinement (MSE to ANN logits)"]) == (
        SearchConfig(),
        {"refine": {"loss": "mse"}},
    )


def test_cli_search_preset_and_flags_reach_the_plan(tmp_path):
    j = tmp_path / "c.json"
    argv = ["convert", "--model", "tests.cli_models:mnist", "--dataset", "mnist"]
    argv += ["--test", "40", "--calibration", "40", "--phases", "4", "--no-step"]
    assert onespike.cli.main([*argv, "--search", "paper", "--json", str(j)]) == 0
    search = json.loads(j.read_text())["plan"]["search"]
    assert search["objective"] == "activation" and search["per_channel"] is False
    argv += [
        "--search",
        "paper",
        "--objective",
        "output",
        "--no-threshold-shift",
        "--search-samples",
        "0",
    ]
    assert onespike.cli.main([*argv, "--json", str(j)]) == 0
    search = json.loads(j.read_text())["plan"]["search"]
    assert search["objective"] == "output" and search["per_channel"] is False
    assert search["threshold_shift"] is False and search["search_samples"] is None
