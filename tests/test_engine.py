"""The engine: one walk over the graph, shared by the step simulator, the cost model and
the code comparison; one energy formula."""

import pytest
import torch

import onespike
from onespike.accounting import (
    E_ADD,
    E_MAC,
    E_MEM,
    E_MUL,
    Ops,
    ann_energy,
    energy_compute,
    energy_total,
)
from onespike.engine import SpikeGraph, phase_window
from onespike.experiments import compare as C
from onespike.simulate_codes import CodeNet, simulate_windowed
from onespike.trace import trace
from tests.nets import Net1d, make, randomize_bn


def test_the_walk_finds_layers_derived_sources_and_the_output():
    model = randomize_bn(Net1d(), 0)  # conv-ReLU, max-pool and flatten of spikes, fc-ReLU, fc
    traced = trace(model)
    g = SpikeGraph(traced.module)
    assert g.layers == list(traced.relus) and len(g.layers) == 2
    assert g.targets == [*g.layers, g.output] and g.output.op == "output"
    assert [k for k, _ in g.walk()] == ["input", "layer", "pool", "reshape", "layer", "output"]
    assert [n for _, n in g.walk("pool", "reshape")] == g.derived
    for t in g.targets:
        assert g.regions[t].target is t
    assert g.regions[g.layers[1]].spike_sources == [g.derived[-1]]  # fc1 reads the flatten
    # the converted network walks the same way, with its input encoder
    x = torch.rand(8, 3, 16, generator=torch.Generator().manual_seed(0))
    snn = onespike.convert(model, x, phases=4, input_coding="single", progress=False)
    kinds = [k for k, _ in SpikeGraph(snn.graph_module).walk()]
    assert kinds == ["input", "encoder", "layer", "pool", "reshape", "layer", "output"]


def test_one_energy_formula():
    ops = Ops(acs=10.0, macs=3.0, muls=4.0, adds=5.0, updates=6.0, spikes=2.0)
    compute = 10 * E_ADD + 3 * E_MAC + 4 * E_MUL + 5 * E_ADD
    assert ops.energy_compute() == pytest.approx(compute)
    assert ops.energy_total() == pytest.approx(compute + (10 + 3 + 6) * E_MEM)
    # onespike's fire-window steps: one multiply and one compare each
    assert energy_compute(10, 3, 4, 5, fire=2) == pytest.approx(compute + 2 * (E_MUL + E_ADD))
    assert energy_total(1.0, 2.0, 3.0, 4.0, 5.0) == pytest.approx(1 + 14 * E_MEM)
    assert ann_energy(100.0) == pytest.approx((100 * E_MAC, 100 * (E_MAC + E_MEM)))


@pytest.mark.parametrize("seed", [0, 3])
def test_compare_costs_of_the_phase_code_equal_onespike_cost(seed):
    """The comparison's figures for onespike's code are those of onespike.cost: the same
    operation counts, spikes and energy, through the same engine and formula."""
    model = make(seed)
    g = torch.Generator().manual_seed(seed)
    xc = torch.rand(48, 2, 8, 8, generator=g)
    x = torch.rand(30, 2, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = C.compare(
        model,
        xc,
        x,
        y,
        C.parse_codes("onespike"),
        max_steps=64,
        onespike_phases=[5],
        progress=False,
    )
    (point,) = res["codes"]["onespike"]["points"]
    snn = onespike.convert(model, xc, phases=5, progress=False)
    t = onespike.cost(model, snn, x).totals
    rel = 1e-12
    assert point["ops"]["acs"] == pytest.approx(t["snn_acs"], rel=rel)
    assert point["ops"]["macs"] == pytest.approx(t["snn_macs"], rel=rel)
    assert point["ops"]["updates"] == pytest.approx(t["snn_neuron_updates"], rel=rel)
    assert point["spikes_per_neuron"] == pytest.approx(t["spikes_per_neuron_mean"], rel=rel)
    assert point["energy_compute_pj"] == pytest.approx(t["snn_energy_compute_pj"], rel=rel)
    assert point["energy_total_pj"] == pytest.approx(t["snn_energy_total_pj"], rel=rel)
    assert point["energy_ratio_compute"] == pytest.approx(t["energy_ratio_compute"], rel=rel)
    assert point["energy_ratio_total"] == pytest.approx(t["energy_ratio_total"], rel=rel)
    assert res["ann_energy_compute_pj"] == pytest.approx(t["ann_energy_compute_pj"], rel=rel)
    assert res["ann_energy_total_pj"] == pytest.approx(t["ann_energy_total_pj"], rel=rel)
    # the windowed walk with the library's phase code counts the same synaptic operations
    net = CodeNet(trace(model))
    windows = {n: phase_window(lp) for n, lp in zip(net.relus, snn.plan.layers)}
    out, ops = simulate_windowed(net, windows, x, 5)
    assert torch.allclose(out, snn(x), atol=1e-5)
    assert ops.acs / 30 == pytest.approx(t["snn_acs"], rel=rel)
    assert ops.macs / 30 == pytest.approx(t["snn_macs"], rel=rel)
    assert ops.spikes / 30 == pytest.approx(t["spikes"], rel=rel)
