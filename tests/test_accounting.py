"""Operation counts and energy against hand-computed figures."""

import pytest
import torch
from torch import nn

import onespike
from onespike.accounting import E_ADD, E_MAC, E_MEM, E_MUL, count_region
from onespike.graph import Runner
from onespike.trace import trace
from tests.nets import TinyMLP


def test_tiny_mlp_counts_by_hand():
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x = torch.rand(50, 4)
    T = 6
    snn = onespike.convert(model, x, phases=T, progress=False)
    run = snn.simulate(x, mode="step")
    rep = onespike.cost(model, snn, x, run=run)
    l1, out = rep.layers
    spikes = run.spike_counts["relu"].double()
    phases = run.spike_phases["relu"]
    assert l1.ann_macs == 12 and out.ann_macs == 6
    assert l1.snn_macs == 12 and l1.snn_acs == 0  # analog input: the first layer does MACs
    assert out.snn_acs == pytest.approx(float(spikes.sum()) * 2 / 50)  # fan-out 2 per spike
    assert l1.input_adds == 3 * T and l1.input_updates == 0
    assert out.input_updates == 2 * T  # membrane times the sender's base, every step
    steps = torch.where(phases >= 0, phases + 1, torch.full_like(phases, T)).double()
    assert l1.fire_updates == pytest.approx(float(steps.sum()) / 50)
    assert l1.spikes_per_neuron_mean == pytest.approx(float(spikes.mean()))
    assert l1.spikes_per_neuron_max <= 1
    t = rep.totals
    snn_e = (
        out.snn_acs * E_ADD
        + 12 * E_MAC
        + out.input_updates * E_MUL
        + l1.input_adds * E_ADD
        + l1.fire_updates * (E_MUL + E_ADD)
    )
    assert t["snn_energy_compute_pj"] == pytest.approx(snn_e)
    assert t["ann_energy_compute_pj"] == pytest.approx(18 * E_MAC)
    ops = out.snn_acs + 12 + out.input_updates + l1.input_adds + l1.fire_updates
    assert t["snn_energy_total_pj"] == pytest.approx(snn_e + ops * E_MEM)
    assert t["energy_ratio_compute"] == pytest.approx(18 * E_MAC / snn_e)
    assert rep.latency_steps == 2 * T
    assert set(rep.to_dict()) >= {"layers", "totals", "unit_energy_pj", "latency_steps"}


def test_nonzero_macs_count_zero_inputs_out():
    model = TinyMLP().eval()
    x = torch.rand(10, 4)
    x[:, :2] = 0
    snn = onespike.convert(model, x, phases=4, progress=False)
    rep = onespike.cost(model, snn, x)
    assert rep.layers[0].ann_nonzero_macs == 6  # two of four inputs are zero


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.r0 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.r1 = nn.ReLU()

    def forward(self, x):
        return self.r1(self.conv(self.pool(self.r0(x))))


def _region_counts(model, events):
    traced = trace(model)
    runner = Runner(traced.module)
    src, target = traced.relus
    reg = runner.region(target)
    return count_region(runner, reg, {src: ("events", events)}, {})


def test_avgpool_folded_into_next_conv():
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, 0] = 1  # one spike: pooled into cell (0, 0) of a 2x2 map
    acs, macs = _region_counts(Pooled(), m)
    assert (acs, macs) == (4.0, 0.0)  # the 3x3 kernel reaches all four outputs
    m[0, 0, 1, 1] = 1  # a second spike in the same pool window
    assert _region_counts(Pooled(), m) == (8.0, 0.0)


class Aggregate(nn.Module):
    def __init__(self, adj):
        super().__init__()
        self.register_buffer("adj", adj)
        self.r0 = nn.ReLU()
        self.fc = nn.Linear(2, 3)
        self.r1 = nn.ReLU()

    def forward(self, x):
        return self.r1(torch.sparse.mm(self.adj, self.fc(self.r0(x))))


def test_sparse_aggregation_counts_existing_edges_only():
    # 3 nodes: self loops plus the edge 0-1 (both directions)
    idx = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 1, 0]])
    adj = torch.sparse_coo_tensor(
        idx, torch.full((5,), 0.5), (3, 3), check_invariants=True
    ).coalesce()
    m = torch.zeros(3, 2)
    m[0, 0] = 1  # node 0 (degree 2 with its loop): reaches 2 nodes x 3 features
    m[2, 1] = 1  # node 2 (isolated, loop only): 1 node x 3 features
    acs, macs = _region_counts(Aggregate(adj), m)
    assert (acs, macs) == (9.0, 0.0)
