"""Softmax by spike timing and ReLU attention (issue 27, item 4)."""

import math

import pytest
import torch

from onespike.codes import phase as pc
from onespike.codes import signed
from onespike.codes import softmax as sm

D = torch.float64


def _scores(seed, shape=(64, 4, 16, 16), spread=2.0):
    return torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(seed)) * spread


def test_exponential_is_the_phase_code_of_exp_gap():
    s = _scores(0)
    for base, T in ((2.0, 8), (1.25, 16)):
        ph = sm.exp_phases(s, base, T)
        assert torch.equal(ph, pc.encode(torch.exp(s - s.amax(-1, keepdim=True)), base, T))
        winners = s == s.amax(-1, keepdim=True)
        assert (ph[winners] == 0).all()  # the winner fires first, value exactly 1
        # one spike at most; the phase grows with the gap below the winner (spike shift)
        gap = (s.amax(-1, keepdim=True) - s)[ph >= 0]
        assert float(gap.max()) <= (T - 1) * math.log(base) + math.log(2) + 1e-9
        order = torch.argsort(gap)
        assert (ph[ph >= 0][order].diff() >= 0).all()
        # shift invariance: adding a constant per row changes nothing
        assert torch.equal(sm.exp_phases(s + 3.5, base, T), ph)


@pytest.mark.parametrize(("base", "T"), [(2.0, 8), (1.5, 8), (1.2, 16), (1.1, 32)])
def test_spike_softmax_within_its_bound(base, T):
    s = _scores(1)
    ref = torch.softmax(s, dim=-1)
    got = sm.spike_softmax(s, base, T)
    err = (got - ref).abs()
    bound = sm.softmax_bound(s, base, T)
    assert (err <= bound + 1e-12).all()
    assert float(err.max()) > 0  # a real approximation, not the reference itself
    torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)))


def test_measured_softmax_error_figures():
    """Measured on 64x4 rows of 16 scores ~ N(0, 2^2), base searched over 1.05..2.0
    (max / mean absolute error against torch.softmax): T = 4: base 2.0, 0.275 / 0.0130;
    T = 8: base 1.75, 0.080 / 0.0059 (base 2: 0.089 / 0.0066); T = 16: base 1.35,
    0.038 / 0.0031; T = 32: base 1.2, 0.025 / 0.0017. The worst-case bound
    (softmax_bound) is looser: its largest entry is 0.69 at T = 8."""
    s = _scores(2)
    ref = torch.softmax(s, dim=-1)
    figures = {}
    for T in (4, 8, 16, 32):
        base, errors = sm.search_base(s, T)
        err = (sm.spike_softmax(s, base, T) - ref).abs()
        figures[T] = (base, float(err.max()), float(err.mean()))
        assert errors[base] == min(errors.values())
        assert errors[base] < errors[2.0] or base == 2.0
    assert figures[8][0] == 1.75 and figures[16][0] == 1.35
    assert figures[8][1] < 0.085 and figures[8][2] < 0.0065
    assert figures[16][1] < 0.04 and figures[16][2] < 0.0035
    means = [figures[T][2] for T in (4, 8, 16, 32)]
    assert means == sorted(means, reverse=True)
    # the search prefers a larger base (wider logit range) at few steps
    assert figures[4][0] > figures[32][0]


def test_attention_step_form_equals_event_form():
    s = _scores(3, shape=(2, 3, 5, 6))
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, 3, 6, 4, dtype=D, generator=g)
    v_phase, v_sign = signed.encode_signed(v, 1.5, 1.6, 8)
    v_val = signed.decode_signed(v_phase, v_sign, 1.6, torch.tensor(1.5, dtype=D), 8)
    event = sm.spike_attention(s, v_val, 1.4, 8)
    steps = sm.spike_attention_steps(s, v_phase, v_val, 1.4, 8)
    torch.testing.assert_close(steps, event, rtol=0, atol=1e-12)
    # and the event form is the spike softmax times the values
    torch.testing.assert_close(event, sm.spike_softmax(s, 1.4, 8) @ v_val, rtol=1e-12, atol=1e-12)


def test_relu_attention():
    s = _scores(5, shape=(3, 7))
    out = sm.relu_attention(s)
    assert torch.equal(out, torch.clamp(s, min=0) / 7)
    assert (out >= 0).all() and float(out.max()) > 0
