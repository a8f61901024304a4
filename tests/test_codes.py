"""The spike codes other than the single-spike phase code: rate, burst, the binary
multi-spike code and TTFS (``onespike.codes.rate``, ``burst``, ``binary``, ``ttfs``).

Each neuron's dynamics against its closed form and its error bound.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onespike.codes import binary, burst, rate, ttfs

torch.set_num_threads(1)

F64 = torch.float64


def _z(n: int = 2000, lo: float = -0.5, hi: float = 1.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=F64) * (hi - lo) + lo


# --------------------------------------------------------------------------------------
# rate: IF with reset by subtraction
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 7, 16, 100, 256])
def test_rate_if_converges_to_clipped_value_within_1_over_T(steps):
    z = _z()
    count = rate.run_constant(z, steps)
    assert torch.equal(count, rate.expected_count(z, steps))
    err = z.clamp(0, 1) - rate.decode(count, steps)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < 1.0 / steps + 1e-9
    assert float(count.max()) <= steps  # at most one spike per step


def test_rate_if_step_subtracts_the_threshold():
    u, s = rate.if_step(torch.tensor([0.2, 0.9, 2.5]), torch.tensor([0.5, 0.5, 0.0]), 1.0)
    assert torch.equal(s, torch.tensor([0.0, 1.0, 1.0]))
    assert torch.allclose(u, torch.tensor([0.7, 0.4, 1.5]))


def test_activation_scale_max_and_percentile():
    v = torch.cat([torch.zeros(1000), torch.arange(1, 1001, dtype=torch.float32)])
    assert rate.activation_scale(v, "max") == 1000.0
    assert rate.activation_scale(v, 50.0) == pytest.approx(500.5)
    assert rate.activation_scale(torch.zeros(10), "max") == 1.0
    with pytest.raises(ValueError, match="percentile"):
        rate.activation_scale(v, 120.0)


# --------------------------------------------------------------------------------------
# burst
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta", [1.0, 1.0 / 16])
@pytest.mark.parametrize("steps", [8, 32, 128])
def test_burst_decodes_within_its_bound(steps, theta):
    """For 0 <= z <= g_max * theta: 0 <= z - value < max_burst * g_max * theta / T."""
    p = burst.BurstParams(2.0, 5)
    z = _z(lo=0.0, hi=p.g_max * theta)
    total, count = burst.run_constant(z, steps, theta, p)
    err = z - burst.decode(total, steps, theta)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < p.max_burst * p.g_max * theta / steps + 1e-9
    assert float(count.max()) <= steps  # one spike per step at most


def test_burst_does_not_clip_where_rate_does():
    z = torch.tensor([3.0], dtype=F64)  # three thresholds per step
    total, _ = burst.run_constant(z, 256, 1.0)
    assert float(burst.decode(total, 256, 1.0)) == pytest.approx(3.0, abs=80 / 256)
    assert float(rate.decode(rate.run_constant(z, 256), 256)) == 1.0


def test_burst_weights_grow_by_beta_then_reset():
    p = burst.BurstParams(2.0, 3)
    u, g = torch.tensor([20.0]), torch.tensor([1.0])
    ws = []
    for _ in range(8):
        u, g, w = burst.burst_step(u, g, torch.tensor([0.0]), 1.0, p)
        ws.append(float(w))
    # 20 = 1 + 2 + 4 + 4 + 4 + 4 (capped at g_max = 4) + 1: a silent step resets g to 1
    assert ws == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 0.0, 1.0]


def test_burst_params_are_checked():
    with pytest.raises(ValueError):
        burst.BurstParams(1.0, 5)
    with pytest.raises(ValueError):
        burst.BurstParams(2.0, 0)


# --------------------------------------------------------------------------------------
# multi-spike base-2 code (binary phase coding, weighted spikes)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("period", [1, 3, 4, 8])
def test_binary_neuron_reproduces_the_binary_expansion(period):
    z = _z(lo=0.0, hi=1.0)
    _, _, bits = binary.run_constant(z, 1, period)
    code = binary.encode(z, period)
    for k in range(period):
        assert torch.equal(bits[k].to(torch.int64), binary.spikes_at(code, k, period))


@pytest.mark.parametrize("period,periods", [(4, 1), (4, 10), (8, 5)])
def test_binary_neuron_average_error_below_2_pow_minus_K_over_P(period, periods):
    z = _z(lo=0.0, hi=1.0 - 2.0**-period)
    total, count, _ = binary.run_constant(z, periods, period)
    err = z - binary.decode_weight_sum(total, periods)
    assert float(err.min()) >= -1e-9
    assert float(err.max()) < 2.0**-period / periods + 1e-9
    assert float(count.max()) <= periods * period


def test_binary_neuron_saturates_at_all_bits():
    total, count, _ = binary.run_constant(torch.tensor([5.0], dtype=F64), 3, 4)
    assert float(count) == 12  # every phase of every period
    assert float(binary.decode_weight_sum(total, 3)) == pytest.approx(1 - 2.0**-4)


# --------------------------------------------------------------------------------------
# TTFS (linear latency code)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold_shift", [True, False])
@pytest.mark.parametrize("phases", [1, 2, 5, 16, 64])
def test_ttfs_step_dynamics_equal_the_closed_form(phases, threshold_shift):
    z = _z(n=5000)
    ph, upd = ttfs.fire(z, phases, threshold_shift=threshold_shift)
    assert torch.equal(ph, ttfs.encode(z, phases, threshold_shift=threshold_shift))
    assert torch.equal(upd, torch.where(ph >= 0, ph + 1, torch.full_like(ph, phases)))


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(-1.0, 2.0, allow_nan=False),
    b=st.floats(-1.0, 2.0, allow_nan=False),
    phases=st.integers(1, 64),
)
def test_ttfs_is_monotonic(a, b, phases):
    lo, hi = sorted((a, b))
    z = torch.tensor([lo, hi], dtype=F64)
    ph = ttfs.encode(z, phases)
    val = ttfs.decode(ph, phases, 1.0)
    assert float(val[0]) <= float(val[1])  # a larger input never decodes smaller
    if ph[0] >= 0:
        assert 0 <= int(ph[1]) <= int(ph[0])  # ... and spikes no later


@pytest.mark.parametrize("phases", [1, 4, 10, 32])
def test_ttfs_with_shift_rounds_to_the_nearest_level(phases):
    z = _z(lo=0.0, hi=1.0)
    val = ttfs.quantize(z, 1.0, phases)
    assert float((val - z).abs().max()) <= 0.5 / phases + 1e-9
    floor = ttfs.quantize(z, 1.0, phases, threshold_shift=False)
    assert float((z - floor).min()) >= -1e-9  # without the shift: never above the input
    assert float((z - floor).max()) < 1.0 / phases + 1e-9
    levels = ttfs.decode(torch.arange(phases), phases, 1.0)
    assert torch.allclose(ttfs.levels(phases), levels)


def test_ttfs_rejects_bad_phases():
    with pytest.raises(ValueError):
        ttfs.levels(0)


@settings(max_examples=50)
@given(x=st.floats(min_value=0.0, max_value=1.0), T=st.integers(1, 16))
def test_binary_roundtrip(x, T):
    code = binary.encode(torch.tensor([x], dtype=torch.float64), T)
    val = float(binary.decode(code, T, torch.float64)[0])
    assert 0 <= x - val < 2.0**-T or (x == 1.0 and val == 1 - 2.0**-T)
    bits = sum(int(binary.spikes_at(code, k, T)[0]) * 2.0 ** -(k + 1) for k in range(T))
    assert bits == val
    assert int(binary.spike_count(code)[0]) == bin(int(code[0])).count("1")
