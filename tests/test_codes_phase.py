"""Properties of the single-spike phase code (codes/phase.py)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from onespike.codes import phase as pc

bases = st.floats(min_value=1.02, max_value=2.0)
windows = st.integers(min_value=1, max_value=24)
values = st.floats(min_value=0.0, max_value=3.0, allow_nan=False)


def _code(z: float, base: float, T: int, threshold_shift: bool = True) -> tuple[int, float]:
    zt = torch.tensor([z], dtype=torch.float64)
    ph = pc.encode(zt, base, T, threshold_shift=threshold_shift)
    return int(ph[0]), float(pc.decode(ph, base, torch.tensor(1.0, dtype=torch.float64))[0])


@given(z=values, base=bases, T=windows)
def test_shift_rounds_to_nearest_level(z, base, T):
    _, q = _code(z, base, T)
    candidates = [base**-k for k in range(T)] + [0.0]
    target = min(z, 1.0)  # saturation: everything above 1 is clipped to the top level
    best = min(abs(target - c) for c in candidates)
    assert abs(target - q) <= best + 1e-12


@given(z=st.floats(min_value=0.0, max_value=1.0), base=bases, T=windows)
def test_relative_error_bound_inside_range(z, base, T):
    if z < base ** -(T - 1):
        return  # below the smallest level: not inside the range
    _, q = _code(z, base, T)
    assert abs(q - z) / z <= pc.max_relative_error(base) + 1e-12


@given(z=st.floats(min_value=0.0, max_value=1.0), base=bases, T=windows)
def test_floor_never_overestimates_and_bound(z, base, T):
    _, q = _code(z, base, T, threshold_shift=False)
    assert q <= z + 1e-15
    if z >= base ** -(T - 1):
        assert (z - q) / z <= pc.max_relative_error(base, threshold_shift=False) + 1e-12


@given(a=values, b=values, base=bases, T=windows, threshold_shift=st.booleans())
def test_monotonic(a, b, base, T, threshold_shift):
    lo, hi = min(a, b), max(a, b)
    ka, qa = _code(lo, base, T, threshold_shift)
    kb, qb = _code(hi, base, T, threshold_shift)
    assert qa <= qb
    if ka >= 0 and kb >= 0:
        assert kb <= ka  # a larger value fires earlier


@given(base=bases, T=windows)
def test_thresholds_decrease_and_match_membrane_form(base, T):
    th = pc.thresholds(base, T, dtype=torch.float64)
    assert bool((th[1:] < th[:-1]).all())
    m = pc.membrane_thresholds(base, T, dtype=torch.float64)
    k = torch.arange(T, dtype=torch.float64)
    assert torch.allclose(m, th * base**k, rtol=1e-12)
    if T > 1:  # with the shift the membrane threshold is constant except the last step
        assert torch.allclose(m[:-1], torch.full((T - 1,), (1 + 1 / base) / 2, dtype=torch.float64))
    assert math.isclose(float(m[-1]), 0.5, rel_tol=1e-12)


def test_one_phase_per_neuron_and_no_spike_below_half_smallest_level():
    base, T = 1.5, 6
    smallest = base ** -(T - 1)
    z = torch.tensor([-1.0, 0.0, smallest * 0.49, smallest * 0.51, 0.7, 1.0, 5.0])
    ph = pc.encode(z, base, T)
    assert ph.tolist() == [-1, -1, -1, T - 1, 1, 0, 0]
    assert ph.dtype == torch.int64 and ph.shape == z.shape


def test_exact_levels_decode_to_themselves():
    base, T = 1.7, 8
    lv = pc.levels(base, T, dtype=torch.float64)
    ph = pc.encode(lv, base, T)
    assert ph.tolist() == list(range(T))
    assert torch.allclose(pc.decode(ph, base, torch.tensor(1.0, dtype=torch.float64)), lv)


def test_quantize_per_channel_scale():
    x = torch.tensor([[[[2.0]], [[2.0]]]])  # [1, 2, 1, 1]
    scale = torch.tensor([2.0, 4.0]).reshape(2, 1, 1)
    q = pc.quantize(x, scale, 2.0, 4)
    assert q.flatten().tolist() == [2.0, 2.0]  # 1.0 * 2 and 0.5 * 4


@pytest.mark.parametrize(
    ("base", "phases", "msg"),
    [
        (1.0, 4, "base"),
        (2.5, 4, "base"),
        (1.5, 0, "phases"),
        (1.5, 2.0, "phases"),
        ("x", 4, "base"),
    ],
)
def test_bad_parameters(base, phases, msg):
    with pytest.raises(ValueError, match=msg):
        pc.PhaseCode(base, phases)


@given(base=bases, T=windows)
def test_window_rule_helpers(base, T):
    assert pc.unit_value(base, T) * pc.window_gain(base, T) == pytest.approx(1.0)
    assert pc.unit_value(base, T) == pytest.approx(
        float(pc.levels(base, T, dtype=torch.float64)[-1])
    )
    ph = torch.arange(-1, T, dtype=torch.int64)
    upd = pc.fire_updates(ph, T)
    assert upd[0] == T and torch.equal(upd[1:], torch.arange(1, T + 1))
    r = pc.reached_from_phase(ph.clone(), T)
    assert torch.equal(pc.phase_from_reached(r, T), ph)


@pytest.mark.parametrize(
    ("base", "T", "threshold_shift"), [(2.0, 5, True), (1.37, 8, False), (1.8, 3, True)]
)
def test_fire_step_by_step_gives_the_phases_of_encode(base, T, threshold_shift):
    """The phase neuron's per-step update (one compare and one multiply per step) fires
    at the phase the event path's encode gives, once at most."""
    z = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1.2
    phase, count = pc.fire(z, base, T, threshold_shift=threshold_shift)
    assert torch.equal(phase, pc.encode(z, base, T, threshold_shift=threshold_shift))
    assert torch.equal(count, (phase >= 0).to(torch.int64))
    assert (phase >= 0).any() and (phase < 0).any()
