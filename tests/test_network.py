"""network.py: the spiking layer, the input encoder and the network built from a plan."""

import pytest
import torch

import onespike
from onespike.codes import binary
from onespike.codes import phase as pc
from onespike.errors import OptionError
from onespike.network import InputEncoder, SpikeLayer, SpikingNetwork, layer_keys
from onespike.plan import LayerPlan, Plan
from onespike.trace import trace
from tests.nets import make


def _lp(scale, base=1.4, phases=5, threshold_shift=True):
    return LayerPlan("relu1", 3, scale, base, phases, threshold_shift, 0.0, 0.0, 1)


PRE = torch.randn(64, 3, 4, generator=torch.Generator().manual_seed(0)) * 1.5


@pytest.mark.parametrize("scale", [0.8, (0.5, 1.0, 2.0)])
@pytest.mark.parametrize("threshold_shift", [True, False])
def test_spike_layer_is_the_phase_code(scale, threshold_shift):
    layer = SpikeLayer(_lp(scale, threshold_shift=threshold_shift))
    s = pc.channel_shape(torch.tensor(scale), PRE.dim())
    phase = pc.encode(PRE / s, 1.4, 5, threshold_shift=threshold_shift)
    assert torch.equal(layer.encode(PRE), phase)
    expected = pc.decode(phase, 1.4, s, 5)
    assert torch.allclose(layer(PRE), expected, rtol=1e-6, atol=0)
    # the recorded path (encode + decode) is bit-identical to the fast one
    fast = layer(PRE)
    layer.record = True
    assert torch.equal(layer(PRE), fast) and torch.equal(layer.last_phase, phase)
    assert (phase >= 0).any() and (phase < 0).any()


def test_input_encoder_codings():
    x = torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(1))
    assert InputEncoder("analog", 6)(x) is x
    enc = InputEncoder("binary", 6)
    enc.record = True
    assert torch.equal(enc(x), binary.decode(binary.encode(x, 6), 6, x.dtype))
    assert torch.equal(enc.last_code, binary.encode(x, 6))
    single = InputEncoder("single", 5, _lp(1.0))
    assert torch.equal(single(x), single.layer(x))
    with pytest.raises(OptionError, match="input_coding must be one of"):
        InputEncoder("phase", 6)


def test_network_replaces_every_relu_in_order():
    model = make(3)
    x = torch.rand(16, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    snn = onespike.convert(model, x, phases=4, progress=False)
    assert snn.layer_names == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert list(snn.spikes) == snn.layer_names  # the keys are the plan names
    assert [m.name for m in snn.spikes.values()] == snn.layer_names
    assert snn.phases == 4 and snn.input_shape == (2, 8, 8)
    ops = [n.target for n in snn.graph_module.graph.nodes if n.op == "call_module"]
    assert [t for t in ops if t.startswith("spikes_")] == [f"spikes_relu{i}" for i in range(1, 6)]
    # forward is the event path; the phases it records are those of the layers' code
    run = snn.simulate(x)
    assert torch.equal(snn(x), run.output)
    assert set(run.spike_phases) == set(snn.layer_names)


def test_a_plan_that_does_not_fit_the_graph_is_refused():
    model = make(3)
    traced = trace(model)
    plan = Plan(4, "analog", (_lp(1.0),))
    with pytest.raises(OptionError, match="the plan has 1 spiking layers, the model 5 ReLUs"):
        SpikingNetwork(traced.module, plan, (2, 8, 8))


def test_layer_keys_follow_the_plan_names():
    """One mapping from plan names to module keys: dots become underscores, a key taken
    (a ReLU module applied twice, an nn.ModuleDict attribute) gets the first free suffix."""
    names = ["relu1", "layer1.0.relu", "relu", "relu", "train", "training", "a.b", "a_b"]
    keys = ["relu1", "layer1_0_relu", "relu", "relu_2", "train_2", "training_2", "a_b", "a_b_2"]
    assert layer_keys(names) == keys


def test_a_relu_module_applied_twice_gives_two_keys(tmp_path):
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 6)
            self.head, self.relu = torch.nn.Linear(6, 3), torch.nn.ReLU()

        def forward(self, x):
            return self.head(self.relu(self.b(self.relu(self.a(x)))))

    torch.manual_seed(0)
    x = torch.rand(32, 4)
    snn = onespike.convert(Twice().eval(), x, phases=4, progress=False)
    # a module called twice: each call is its own layer, named by its fx node, so plans,
    # results and files never key two layers alike
    assert snn.layer_names == ["relu", "relu_1"] and list(snn.spikes) == ["relu", "relu_1"]
    run = snn.simulate(x, mode="step")
    assert list(run.spike_phases) == ["relu", "relu_1"]
    onespike.save(snn, tmp_path / "twice.safetensors")
    back = onespike.load(tmp_path / "twice.safetensors")
    assert list(back.spikes) == ["relu", "relu_1"] and torch.equal(back(x), snn(x))
