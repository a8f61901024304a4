"""Tracing: BatchNorm folding, the supported-operator list, clear errors before any work."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onespike.errors import UnsupportedModelError
from onespike.trace import fold_batchnorm, trace
from tests.nets import Net1d, make, randomize_bn


def test_bn_folding_is_exact():
    torch.manual_seed(0)
    model = make(3)
    traced = trace(model)
    x = torch.rand(16, 2, 8, 8)
    with torch.no_grad():
        assert torch.allclose(traced.module(x), model(x), atol=1e-5)
    names = [type(m).__name__ for m in traced.module.modules()]
    assert "BatchNorm2d" not in names and "Dropout" not in names  # folded / dropped
    bn_nodes = [
        n for n in traced.module.graph.nodes if n.op == "call_module" and "bn" in str(n.target)
    ]
    assert bn_nodes == []


def test_fold_batchnorm_float64_identity():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3).double()
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(5)), 1)[0].double()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        ref = bn(conv(x))
        fold_batchnorm(conv, bn)
        assert torch.allclose(conv(x), ref, atol=1e-12)


def test_bn1d_after_linear_folds():
    model = randomize_bn(Net1d(), 2)
    traced = trace(model)
    x = torch.rand(8, 3, 16)
    with torch.no_grad():
        assert torch.allclose(traced.module(x), model(x), atol=1e-5)


def test_model_left_untouched():
    model = make(4)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model)
    assert model.training  # mode unchanged
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Sigmoid()
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        h = self.act(self.conv(x))
        h = torch.tanh(self.conv2(h))
        return self.norm(h.mean((2, 3)) * h.mean((2, 3)))


def test_every_unsupported_node_listed_with_its_place():
    with pytest.raises(UnsupportedModelError) as e:
        trace(Mixed())
    msg = str(e.value)
    assert "'act' (Sigmoid): non-ReLU activation" in msg
    assert "tanh" in msg
    assert "'norm' (LayerNorm): not convertible; use BatchNorm1d" in msg
    assert "multiplication/division by a number" in msg  # tensor * tensor
    assert "Mixed: 4 unsupported node(s)" in msg  # one list, one entry per node


def test_maxpool_before_relu_rejected():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(2 * 3 * 3, 2)

        def forward(self, x):
            return self.fc(F.relu(self.pool(self.conv(x))).flatten(1))

    with pytest.raises(
        UnsupportedModelError, match="'pool' \\(MaxPool2d\\): max-pooling must take spikes"
    ):
        trace(M())


def test_standalone_batchnorm_folds_forward_or_is_rejected():
    """A BatchNorm not after a Conv/Linear folds into the layer after it where exact (an
    unpadded convolution); before a padded one it is refused, with the reason."""
    m = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.ReLU())
    m[0].running_mean.fill_(0.3)
    m[0].running_var.fill_(2.0)
    m.eval()
    x = torch.rand(4, 1, 6, 6)
    t = trace(m)
    assert not any(isinstance(k, nn.BatchNorm2d) for k in t.module.modules())
    assert torch.allclose(t.module(x), m(x), atol=1e-6)
    m = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    with pytest.raises(UnsupportedModelError, match=r"BatchNorm folds into .*pads its input"):
        trace(m)


def test_no_relu_and_control_flow_and_non_module():
    with pytest.raises(UnsupportedModelError, match="no ReLU"):
        trace(nn.Sequential(nn.Linear(3, 2)))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="could not be traced"):
        trace(Branchy())
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        trace(lambda x: x)


def test_tuple_output_rejected():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = F.relu(self.fc(x))
            return h, h

    with pytest.raises(UnsupportedModelError, match="single tensor"):
        trace(Two())


# --------------------------------------------------------------------------- the operator table


def test_the_operator_table_is_complete():
    """Every entry of trace.OPS says its role, its cost and its NIR form (or why it has
    none) in words the rest of the package knows: adding an operator to the table is
    enough, and a missing piece fails here naming the operator."""
    from onespike import nir_export
    from onespike.trace import COSTS, OPS

    roles = {"relu", "weighted", "maxpool", "linear", "shape", "drop", "product", "softmax"}
    roles.add("signed")
    for op in OPS:
        assert op.kind in ("module", "function", "method"), op
        assert op.role in roles | {"refused"}, op
        assert op.cost in COSTS, op
        assert bool(op.instead) == (op.role == "refused"), f"{op}: say what to use instead"
        if op.nir is None:
            assert op.no_nir or op.role in ("shape", "refused"), f"{op}: say why no NIR form"
        else:
            assert op.nir in nir_export.NIR_FORMS, f"{op}: the NIR exporter cannot write it"
        if op.kind == "module":
            assert isinstance(op.target, type) and issubclass(op.target, nn.Module), op
            assert op.params == (op.role == "weighted"), op
        if op.role == "weighted":
            assert op.cost == "synapses", op
    targets = [(op.kind, id(op.target)) for op in OPS]
    assert len(set(targets)) == len(targets), "an operator is listed twice"


def test_role_and_cost_are_read_from_the_table():
    from onespike.trace import is_add, op_of, role

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.pool = nn.AvgPool1d(2)

        def forward(self, x):
            h = torch.relu(self.fc(x))
            return self.pool((h + h).view(x.size(0), 1, 4)).flatten(1)

    gm = torch.fx.symbolic_trace(Net())
    mods = dict(gm.named_modules())
    got = {n.name: (role(n, mods), getattr(op_of(n, mods), "cost", None)) for n in gm.graph.nodes}
    assert got == {
        "x": ("input", None),
        "fc": ("weighted", "synapses"),
        "relu": ("relu", "neurons"),
        "add": ("linear", "membrane"),
        "size": ("shape", "free"),
        "view": ("linear", "reshape"),
        "pool": ("linear", "pool_area"),
        "flatten": ("linear", "reshape"),
        "output": ("output", None),
    }
    assert [n.name for n in gm.graph.nodes if is_add(n)] == ["add"]
