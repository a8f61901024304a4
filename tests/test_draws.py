"""The per-draw harness the result scripts share (onespike.experiments.draws)."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from onespike.experiments.draws import (
    Rows,
    ShippedEval,
    calibration_draw,
    draw_cells,
    draw_parser,
    grid,
)


def _args(argv: list[str]) -> argparse.Namespace:
    return draw_parser("doc line\n", phases="8").parse_args(argv)


def test_grid_walks_phases_then_seeds_in_the_order_given() -> None:
    args = _args(["--phases", "8,4", "--seeds", "11,0"])
    assert list(grid(args)) == [(8, 11), (8, 0), (4, 11), (4, 0)]


def test_calibration_draw_is_the_seeded_draw_and_its_row_says_what_was_measured() -> None:
    x, y = torch.zeros(30, 1, 28, 28), torch.zeros(30, dtype=torch.long)
    shipped = ShippedEval(nn.Identity(), "mnist", x, y, x[:7])
    args = _args(["--model", "m", "--calibration", "16", "--threads", "2"])
    xc, row = calibration_draw(args, shipped, 6, 3)
    xc2, _ = calibration_draw(args, shipped, 6, 3)
    xc3, _ = calibration_draw(args, shipped, 6, 4)
    assert xc.shape == (16, 1, 28, 28) and torch.equal(xc, xc2) and not torch.equal(xc, xc3)
    assert row["model"] == "m" and row["dataset"] == "mnist"
    assert (row["phases"], row["seed"], row["threads"]) == (6, 3, 2)
    assert (row["test_images"], row["cost_images"]) == (30, 7)
    assert row["bias_correction"] is False
    _, row_bc = calibration_draw(_args(["--model", "m", "--bias-correction"]), shipped, 6, 3)
    assert row_bc["bias_correction"] is True
    assert "16" in row["calibration"] and "3" in row["calibration"]


def test_a_results_file_holds_one_bias_correction_setting(tmp_path) -> None:
    """Rows written without the flag (or before it existed) are not resumed by a run with it,
    nor mixed with its rows: the run is refused with what to do."""
    path = tmp_path / "rows.json"
    rows = Rows(path)
    rows.add({"phases": 8, "seed": 0, "loss": 1.0})  # an old row: no field, no correction
    assert Rows(path).have(8, 0)
    with pytest.raises(SystemExit, match="another file"):
        Rows(path, {"bias_correction": True})
    bc = Rows(tmp_path / "bc.json", {"bias_correction": True})
    bc.add({"phases": 8, "seed": 0, "bias_correction": True})
    assert Rows(tmp_path / "bc.json", {"bias_correction": True}).have(8, 0)
    with pytest.raises(SystemExit, match="bias_correction=True"):
        Rows(tmp_path / "bc.json", {"bias_correction": False})


def test_a_results_file_holds_one_value_of_each_setting_with_defaults_for_old_rows(
    tmp_path,
) -> None:
    """Any option a script names is held to one value per file; a row without the field
    counts as the default the script gives, so old files still resume."""
    path = tmp_path / "rows.json"
    Rows(path).add({"phases": 8, "seed": 0})  # before --base existed: the default, "auto"
    assert Rows(path, {"base": "auto"}, defaults={"base": "auto"}).have(8, 0)
    with pytest.raises(SystemExit, match="base='auto'; this run has base='global'"):
        Rows(path, {"base": "global"}, defaults={"base": "auto"})
    with pytest.raises(SystemExit, match="held_out_test=None"):
        Rows(path, {"held_out_test": 5000})  # no default given: the missing field differs


def test_draw_cells_give_every_draw_the_mean_the_worst_and_the_mean_costs() -> None:
    rows = [
        {
            "seed": s,
            "loss": v,
            "spikes_per_neuron": sp,
            "energy_ratio_compute": c,
            "energy_ratio_total": t,
        }
        for s, v, sp, c, t in [(0, 0.5, 0.4, 6.0, 3.0), (7, -0.1, 0.6, 4.0, 2.0)]
    ]
    assert (
        draw_cells(rows) == "+0.50 (seed 0), -0.10 (seed 7) | +0.20 / +0.50 | 0.500 | 5.00x; 2.50x"
    )
