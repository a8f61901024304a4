"""The per-draw harness the result scripts share (onespike.experiments.draws)."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from onespike.experiments.draws import ShippedEval, calibration_draw, draw_parser, grid


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
    assert "16" in row["calibration"] and "3" in row["calibration"]
