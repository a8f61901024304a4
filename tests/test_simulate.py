"""The step-by-step simulator and the event-exact fast path agree."""

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import onespike
from onespike.codes import phase as pc
from tests.nets import Net1d, make, randomize_bn


def _agree(snn, x, dtype):
    ev = snn.simulate(x, mode="event", dtype=dtype)
    stp = snn.simulate(x, mode="step", dtype=dtype)
    mism = sum(int((stp.spike_phases[k] != ev.spike_phases[k]).sum()) for k in ev.spike_phases)
    total = sum(v.numel() for v in ev.spike_phases.values())
    return ev, stp, mism, total


# no shrinking: each example converts a network; a failure prints its parameters
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    seed=st.integers(0, 10_000),
    relu_kind=st.sampled_from(["module", "F", "torch", "method"]),
    maxpool=st.booleans(),
    merge=st.sampled_from(["add", "cat"]),
    pool=st.sampled_from(["avg", "adaptive"]),
    flatten=st.sampled_from(["view", "reshape", "torch", "module"]),
    coding=st.sampled_from(["analog", "binary", "single"]),
    phases=st.integers(2, 10),
)
def test_step_equals_event_on_random_networks(
    seed, relu_kind, maxpool, merge, pool, flatten, coding, phases
):
    model = make(
        seed, relu_kind=relu_kind, maxpool=maxpool, merge=merge, pool=pool, flatten=flatten
    )
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(24, 2, 8, 8, generator=g)
    snn = onespike.convert(model, x, phases=phases, input_coding=coding, progress=False)
    # float64: no ties at a threshold, so phases and outputs are identical
    ev, stp, mism, _ = _agree(snn, x, torch.float64)
    assert mism == 0
    assert torch.equal(ev.output.argmax(1), stp.output.argmax(1))
    assert torch.allclose(ev.output, stp.output, atol=1e-9)
    if ev.input_spikes is not None:
        assert torch.equal(ev.input_spikes, stp.input_spikes)
    for k, c in stp.spike_counts.items():
        assert int(c.max()) <= 1, k  # at most one spike per neuron, counted step by step
        assert torch.equal(c, (stp.spike_phases[k] >= 0).long())
    # float32: ties may flip a handful of neurons, no more
    _, _, mism32, total = _agree(snn, x, None)
    assert mism32 <= max(2, total // 1000)


def test_conv1d_batchnorm1d_maxpool1d():
    torch.manual_seed(0)
    model = randomize_bn(Net1d(), 0)
    x = torch.rand(32, 3, 16)
    snn = onespike.convert(model, x, phases=6, progress=False)
    ev, stp, mism, _ = _agree(snn, x, torch.float64)
    assert mism == 0
    assert torch.allclose(ev.output, stp.output, atol=1e-9)


def test_latency_and_windows_follow_the_longest_path():
    model = make(1, merge="add")
    x = torch.rand(8, 2, 8, 8)
    snn = onespike.convert(model, x, phases=5, progress=False)
    wins = {lp.name: lp.fire_window for lp in snn.plan.layers}
    # relu1 -> relu2, relu3 (both window 2); relu4 waits for relu1's spikes delayed by one window
    assert wins == {"relu1": 1, "relu2": 2, "relu3": 2, "relu4": 3, "relu5": 4}
    assert snn.plan.latency_steps == (4 + 1) * 5


def test_simulate_rejects_bad_mode_and_input():
    model = make(2)
    x = torch.rand(8, 2, 8, 8)
    snn = onespike.convert(model, x, phases=4, progress=False)
    with pytest.raises(ValueError, match="mode"):
        snn.simulate(x, mode="fast")
    with pytest.raises(ValueError, match=r"expected a batch \[N, 2, 8, 8\]"):
        snn(torch.rand(8, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        snn(torch.full((2, 2, 8, 8), float("nan")))


def test_fast_forward_equals_recorded_event_path():
    """forward() pools before coding (exact by monotonicity); simulate() codes every neuron."""
    model = make(5, maxpool=True)
    x = torch.rand(32, 2, 8, 8)
    snn = onespike.convert(model, x, phases=6, progress=False)
    assert torch.equal(snn(x), snn.simulate(x, mode="event").output)
    from onespike.graph import Runner

    fast, slow = snn._pooled_first, snn.graph_module
    # the max-pool moved in front of the spiking layer that fed it, nothing else changed
    f_nodes = {n.name: n for n in fast.graph.nodes}
    moved = [
        n for n in slow.graph.nodes
        if n.op == "call_module" and n.target.startswith("spikes_")
        and len(n.users) == 1 and Runner(slow).role(next(iter(n.users))) == "maxpool"
    ]  # fmt: skip
    assert moved, "the network has a max-pool of spikes"
    for layer in moved:
        pool = next(iter(layer.users))
        assert f_nodes[pool.name].args[0] is f_nodes[layer.args[0].name]
        assert f_nodes[layer.name].args[0] is f_nodes[pool.name]
    assert sorted(f_nodes) == sorted(n.name for n in slow.graph.nodes)
    # the coded-then-pooled values equal the pooled-then-coded ones, bit for bit, and
    # the pooled phases follow the max-pool rule of codes.phase
    with torch.no_grad():
        env_fast, env_slow = Runner(fast).forward_all(x), Runner(slow).forward_all(x)
    run = snn.simulate(x, mode="event")
    for layer in moved:
        pool = next(iter(layer.users))
        assert torch.equal(env_fast[f_nodes[layer.name]], env_slow[pool])
        mod = slow.get_submodule(layer.target)
        phases = run.spike_phases[mod.name]
        pooled = pc.maxpool_phases(Runner(slow).on_input(pool, env_slow), phases, 6, x.dtype)
        assert torch.equal(mod.encode(env_fast[f_nodes[pool.name]]), pooled)


class BiasParam(torch.nn.Module):
    """A bias kept as a parameter and added to the activations (``h + self.b``)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8, bias=False)
        self.b1 = torch.nn.Parameter(torch.linspace(-0.2, 0.3, 8))
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x) + self.b1))


def test_bias_parameter_added_once():
    torch.manual_seed(3)
    model = BiasParam().eval()
    x = torch.rand(40, 6)
    snn = onespike.convert(model, x, phases=6, progress=False)
    ev, stp, mism, _ = _agree(snn, x, torch.float64)
    assert mism == 0
    assert torch.allclose(ev.output, stp.output, atol=1e-9)


@pytest.mark.parametrize(
    "pool",
    [
        torch.nn.MaxPool2d(2),
        torch.nn.MaxPool2d(3, stride=2, padding=1),
        torch.nn.MaxPool2d(3, stride=2, ceil_mode=True),
    ],
)
def test_maxpool_of_spikes_equals_step_by_step_gating(pool):
    """The one-pass pool (earliest spike of each window) equals a gate run step by step:
    at step t it passes a spike if an input spikes at t and none has passed before."""
    from onespike.codes import phase as pc

    T = 7
    g = torch.Generator().manual_seed(0)
    phase = torch.randint(0, T, (3, 4, 9, 9), generator=g)
    phase[torch.rand(phase.shape, generator=g) < 0.8] = -1  # -1: no spike; sparse
    out = pc.maxpool_phases(pool, phase, T, torch.float32)
    passed, ref = None, None
    for t in range(T):
        spikes_t = pool((phase == t).float()) > 0
        if ref is None:
            ref = torch.full(spikes_t.shape, -1, dtype=torch.int64)
            passed = torch.zeros(spikes_t.shape, dtype=torch.bool)
        new = spikes_t & ~passed
        ref[new] = t
        passed |= new
    assert torch.equal(out, ref)
    assert (ref >= 0).any() and (ref == -1).any()  # both outcomes were exercised
    # the spike form of the same rule: one spike per pool window with any input spike
    spikes = pc.maxpool_spikes(pool, (phase >= 0).float())
    assert torch.equal(spikes, (ref >= 0).float())
