"""graph.py: running nodes of a traced graph (Runner) and the regions between spike sources."""

import torch
from torch import fx, nn

from onespike.graph import Runner, weighted_call
from onespike.trace import trace


class Res(nn.Module):
    """input -> fc1 -> relu a; a -> fc2 -> relu b; (fc3(b) + a) -> relu c -> flatten -> out."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.out = (nn.Linear(4, 4) for _ in range(4))
        self.pool = nn.MaxPool1d(2)

    def forward(self, x):
        a = torch.relu(self.fc1(x))
        b = torch.relu(self.fc2(a))
        c = torch.relu(self.fc3(b) + a)
        p = self.pool(c.view(c.size(0), 1, 4)).flatten(1)
        return self.out(torch.cat([p, p], 1))


def _runner():
    torch.manual_seed(0)
    model = Res().eval()
    t = trace(model)
    return model, t, Runner(t.module), {n.name: n for n in t.module.graph.nodes}


def test_forward_all_gives_every_node_and_the_models_output():
    model, _, r, nodes = _runner()
    x = torch.randn(5, 4)
    env = r.forward_all(x)
    assert torch.equal(env[nodes["output"]], model(x))
    assert torch.equal(env[nodes["relu"]], torch.relu(model.fc1(x)))
    assert set(env) == set(r.nodes)


def test_run_node_without_bias_and_weighted_call_with_another_weight():
    model, _, r, nodes = _runner()
    x = torch.randn(3, 4)
    fc1 = nodes["fc1"]
    assert torch.allclose(r.run_node(fc1, {fc1.args[0]: x}, bias=False), x @ model.fc1.weight.T)
    ones = torch.ones(4, 4)
    assert torch.equal(weighted_call(model.fc1, x, bias=False, weight=ones), x @ ones.T)
    assert torch.equal(weighted_call(model.fc1, x), model.fc1(x))


def test_regions_run_from_the_nearest_spike_sources():
    _, _, r, nodes = _runner()
    relu, relu_1, relu_2, out = nodes["relu"], nodes["relu_1"], nodes["relu_2"], nodes["output"]
    reg = r.region(relu_2)  # fc3(b) + a
    assert [n.name for n in reg.nodes] == ["fc3", "add"]
    assert reg.sources == [relu, relu_1] and reg.pre is nodes["add"]
    assert r.region(relu).sources == [nodes["x"]]
    # the output's region starts at the max-pooled, flattened spikes of relu_2
    reg = r.region(out)
    assert [n.name for n in reg.nodes] == ["cat", "out"]
    assert [s.name for s in reg.sources] == ["flatten"]


def test_spiking_nodes_sources_and_chains():
    _, _, r, nodes = _runner()
    for name in ("relu", "view", "pool", "flatten"):
        assert r.is_spiking(nodes[name]) and r.is_source(nodes[name]), name
    for name in ("fc1", "add", "cat", "size"):
        assert not r.is_spiking(nodes[name]), name
    assert not r.is_source(nodes["add"])
    assert r.spiking_chain(nodes["flatten"]) == [
        nodes[n] for n in ("relu_2", "view", "pool", "flatten")
    ]


def test_replacements_and_on_input():
    _, t, _, nodes = _runner()
    relu = nodes["relu"]
    r = Runner(t.module, {relu: lambda v: torch.zeros_like(v)})  # a layer that never fires
    env = r.forward_all(torch.randn(2, 4))
    assert torch.equal(env[relu], torch.zeros(2, 4))
    pool = nodes["pool"]
    apply = r.on_input(pool, env)
    v = torch.tensor([[[1.0, 3.0, -2.0, 0.5]]])
    assert torch.equal(apply(v), torch.tensor([[[3.0, 0.5]]]))
    assert isinstance(t.module, fx.GraphModule)
