"""Signed single-spike neurons and spike x spike products (issue 27, items 2 and 3)."""

import pytest
import torch

from onespike.codes import phase as pc
from onespike.codes import signed

D = torch.float64


def test_signed_code_is_sign_times_phase_code_of_magnitude():
    torch.manual_seed(0)
    x = torch.randn(2000, dtype=D) * 2
    scale, base, T = 1.7, 1.4, 6
    q = signed.quantize_signed(x, scale, base, T)
    assert torch.equal(q, torch.sign(x) * pc.quantize(x.abs(), scale, base, T))
    assert torch.equal(signed.quantize_signed(-x, scale, base, T), -q)  # odd
    # phases and signs decode to the same values; one spike at most, sign of the value
    phase, sign = signed.encode_signed(x, scale, base, T)
    assert torch.equal(signed.decode_signed(phase, sign, base, torch.tensor(scale, dtype=D), T), q)
    assert torch.equal(phase, pc.encode(x.abs() / scale, base, T))
    assert ((sign == 0) == (phase < 0)).all()
    assert (sign[phase >= 0] == torch.sign(x[phase >= 0]).to(torch.int8)).all()
    assert (sign == -1).any() and (sign == 1).any() and (phase < 0).any()
    # each half keeps the phase code's error bound inside the range
    inside = (x.abs() >= scale * base ** -(T - 1)) & (x.abs() <= scale)
    rel = ((q - x).abs() / x.abs())[inside]
    assert float(rel.max()) <= pc.max_relative_error(base) + 1e-12


def test_fire_signed_gives_encode_phases_and_signs():
    torch.manual_seed(1)
    z = torch.randn(500, dtype=D)
    for base, T in ((2.0, 4), (1.3, 9)):
        phase, sign, count = signed.fire_signed(z, base, T)
        p_ev, s_ev = signed.encode_signed(z, 1.0, base, T)
        assert torch.equal(phase, p_ev) and torch.equal(sign, s_ev)
        assert int(count.max()) <= 1 and torch.equal(count == 1, phase >= 0)


def _spiking(shape, base, T, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=D, generator=g) * scale
    phase, sign = signed.encode_signed(x, scale, base, T)
    return phase, signed.decode_signed(phase, sign, base, torch.tensor(scale, dtype=D), T)


@pytest.mark.parametrize(("base_a", "base_b", "T"), [(2.0, 2.0, 6), (1.3, 1.7, 8), (1.1, 2.0, 3)])
def test_trace_product_equals_product_of_decoded_values(base_a, base_b, T):
    qp, qv = _spiking((2, 3, 5, 7), base_a, T, 0)
    kp, kv = _spiking((2, 3, 6, 7), base_b, T, 1, scale=0.8)
    kp_t, kv_t = kp.transpose(-2, -1), kv.transpose(-2, -1)  # k^T: a reshape of spikes
    event = signed.event_matmul(qv, kv_t)
    steps = signed.trace_matmul(qp, qv, kp_t, kv_t, T)
    torch.testing.assert_close(steps, event, rtol=0, atol=1e-12)
    assert event.abs().max() > 0.1  # not a product of zeros


def test_trace_product_is_bit_exact_on_dyadic_values():
    # base 2 and power-of-two scales: every partial sum is exact in float64
    qp, qv = _spiking((4, 8, 16), 2.0, 8, 3)
    kp, kv = _spiking((4, 16, 8), 2.0, 8, 4, scale=0.5)
    assert torch.equal(signed.trace_matmul(qp, qv, kp, kv, 8), qv @ kv)


def test_each_pair_enters_once_at_the_later_spike():
    # a 1x1 @ 1x1 product: the only contribution appears at max(phase_a, phase_b)
    for pa, pb in ((0, 3), (3, 0), (2, 2)):
        a_p, b_p = torch.tensor([[pa]]), torch.tensor([[pb]])
        a_v, b_v = torch.tensor([[2.0**-pa]], dtype=D), torch.tensor([[-(2.0**-pb)]], dtype=D)
        partial = [float(signed.trace_matmul(a_p, a_v, b_p, b_v, t + 1)) for t in range(5)]
        later = max(pa, pb)
        assert all(v == 0 for v in partial[:later])
        assert all(v == -(2.0 ** -(pa + pb)) for v in partial[later:])
    # silent neurons contribute nothing, whatever their stored value
    out = signed.trace_matmul(
        torch.tensor([[-1]]), torch.tensor([[5.0]]), torch.tensor([[0]]), torch.tensor([[1.0]]), 4
    )
    assert float(out) == 0.0


def test_product_pairs_counts_pairs_that_both_spiked():
    qp, _ = _spiking((3, 4, 6), 1.5, 5, 5)
    kp, _ = _spiking((3, 6, 4), 1.5, 5, 6)
    brute = sum(
        int((qp[b, i, :] >= 0).logical_and(kp[b, :, j] >= 0).sum())
        for b in range(3)
        for i in range(4)
        for j in range(4)
    )
    assert float(signed.product_pairs(qp, kp)) == brute > 0
