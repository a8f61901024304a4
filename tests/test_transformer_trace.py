"""Tracing the transformer idioms of issue 27 (item 1), and converting the token idioms
(attention itself: tests/test_transformer_convert.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onespike
from onespike.errors import UnsupportedModelError
from onespike.trace import role, trace
from tests.nets import warm_bn


def _warm_bn(model, x, seed=0):
    """Running statistics and affine parameters that are not the identity."""
    torch.manual_seed(seed)
    return warm_bn(model, x, bias=0.3)


class Tokens(nn.Module):
    """Every idiom of item 1 except attention: Linear on [N, tokens, d], positional
    embedding, BatchNorm1d over features through transposes (folded backwards and
    forwards), transpose/permute/view/reshape/flatten/chunk/split, shape arithmetic,
    scaling by a constant, residual adds, class-token indexing and the token mean."""

    def __init__(self, d=8, tokens=6):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.bn0 = nn.BatchNorm1d(d)  # after a Linear, through a transpose: folds back
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.1)
        self.relu0 = nn.ReLU()
        self.bn1 = nn.BatchNorm1d(d)  # before a Linear, through a transpose: folds forward
        self.fc1 = nn.Linear(d, 2 * d)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(d, d)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.bn0(self.embed(x).transpose(1, 2)).transpose(1, 2)
        h = self.relu0(h + self.pos)
        u = self.bn1(h.transpose(1, 2)).transpose(1, 2)
        a, c = self.fc1(u).chunk(2, dim=-1)
        p, q = torch.split(a + c, [4, 4], dim=-1)
        z = torch.cat([q, p], dim=-1).view(b, n * 2, -1).reshape(b, n + 1 - 1, -1)
        z = z.permute(0, 2, 1).permute(0, 2, 1) * 0.5
        h = h + self.relu1(z)
        h = h + self.fc2(self.relu2(h.flatten(0, 1)).view(b, n, -1))
        return self.head(h.mean(dim=1) + torch.mean(h, 1) / 2 + h[:, 0])


def test_token_idioms_trace_fold_and_convert():
    torch.manual_seed(0)
    x = torch.rand(96, 6, 4)
    model = _warm_bn(Tokens(), x)
    traced = trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced.module(x), model(x), rtol=1e-5, atol=1e-5)
    names = [type(m).__name__ for m in traced.module.modules()]
    assert "BatchNorm1d" not in names  # both folded
    modules = traced.modules()
    roles = {n.name: role(n, modules) for n in traced.module.graph.nodes}
    assert roles["getattr_1"] == "shape" and roles["mul"] == "shape"  # x.shape, n * 2
    arith = ("add", "sub")
    size_adds = [n for n in traced.module.graph.nodes if getattr(n.target, "__name__", "") in arith]
    size_adds = [n for n in size_adds if n.args[1:2] == (1,)]
    assert len(size_adds) == 2 and {roles[n.name] for n in size_adds} == {"shape"}  # n + 1 - 1
    assert roles["getitem_7"] == "linear"  # h[:, 0], a part of a tensor
    assert {roles[k] for k in ("chunk", "split", "permute", "transpose_2")} == {"linear"}
    assert traced.products == [] and traced.softmaxes == []
    snn = onespike.convert(model, x, phases=8, progress=False)
    with torch.no_grad():
        out, ref = snn(x), model(x)
        step = snn.simulate(x, mode="step")
    torch.testing.assert_close(step.output, out, rtol=0, atol=1e-5)  # step == event
    assert all(int(c.max()) <= 1 for c in step.spike_counts.values())  # one spike at most
    assert float((out - ref).abs().max()) < 0.2 * float(ref.abs().max())
    assert float((out - ref).abs().max()) > 0  # really spiking


def test_token_idioms_save_and_load(tmp_path):
    torch.manual_seed(1)
    x = torch.rand(48, 6, 4)
    model = _warm_bn(Tokens(), x, seed=1)
    snn = onespike.convert(model, x, phases=6, progress=False)
    snn.save(tmp_path / "t.safetensors")
    back = onespike.load(tmp_path / "t.safetensors")
    with torch.no_grad():
        assert torch.equal(back(x), snn(x))


class Attn(nn.Module):
    """Attention written with Linear + matmul + softmax, in four spellings of each."""

    def __init__(self, d=8, heads=2, softmax="method", product="matmul"):
        super().__init__()
        self.heads, self.softmax, self.product = heads, softmax, product
        self.qkv = nn.Linear(d, 3 * d)
        self.sm = nn.Softmax(dim=-1)
        self.proj = nn.Linear(d, d)
        self.relu = nn.ReLU()
        self.head = nn.Linear(d, 2)

    def _soft(self, s):
        if self.softmax == "module":
            return self.sm(s)
        if self.softmax == "F":
            return F.softmax(s, dim=-1)
        if self.softmax == "torch":
            return torch.softmax(s, -1)
        return s.softmax(dim=-1)

    def _mm(self, a, b):
        if self.product == "bmm":
            return torch.bmm(a.flatten(0, 1), b.flatten(0, 1)).view(
                a.shape[0], a.shape[1], -1, b.shape[-1]
            )
        if self.product == "torch":
            return torch.matmul(a, b)
        return a @ b

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, n, self.heads, c // self.heads).transpose(1, 2)
        a = self._soft(self._mm(q, k.transpose(-2, -1)) * (c // self.heads) ** -0.5)
        h = x + self.proj(self._mm(a, v).transpose(1, 2).reshape(b, n, c))
        return self.head(self.relu(h).mean(1))


@pytest.mark.parametrize(
    ("softmax", "product"),
    [("method", "matmul"), ("F", "torch"), ("torch", "bmm"), ("module", "matmul")],
)
def test_attention_traces_with_products_and_softmax(softmax, product):
    torch.manual_seed(2)
    model = Attn(softmax=softmax, product=product).eval()
    x = torch.randn(5, 4, 8)
    traced = trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced.module(x), model(x))
    modules = traced.modules()
    assert len(traced.products) == 2 and len(traced.softmaxes) == 1
    assert all(role(n, modules) == "product" for n in traced.products)
    # q @ k^T comes before the softmax, attention @ v after it
    order = list(traced.module.graph.nodes)
    first, second = (order.index(n) for n in traced.products)
    assert first < order.index(traced.softmaxes[0]) < second


def test_softmax_over_another_dimension_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(x)).softmax(dim=1)

    with pytest.raises(UnsupportedModelError, match=r"softmax.*last dimension.*dim=1"):
        trace(Bad())


def test_activation_times_parameter_is_refused_with_advice():
    class XW(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x) @ self.w

    with pytest.raises(UnsupportedModelError, match=r"use nn\.Linear"):
        trace(XW())


class Standard(nn.Module):
    """The same block as users write it for GPUs: LayerNorm, GELU, nn.MultiheadAttention,
    F.gelu and F.layer_norm."""

    def __init__(self, d=8):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc = nn.Linear(d, d)
        self.gelu = nn.GELU()
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.ln(x)
        h = x + self.mha(h, h, h)[0]
        h = F.layer_norm(self.relu(self.gelu(self.fc(h))), (8,))
        return F.gelu(h).mean(1)


def test_layernorm_gelu_and_mha_refused_naming_each_node():
    with pytest.raises(UnsupportedModelError) as e:
        trace(Standard())
    msg = str(e.value)
    assert "'ln' (LayerNorm): not convertible; use BatchNorm1d over the features" in msg
    assert "'gelu' (GELU): not convertible; use ReLU" in msg
    assert "'mha' (MultiheadAttention): not convertible; write the attention explicitly" in msg
    assert "node 'layer_norm' (function layer_norm): not convertible; use BatchNorm1d" in msg
    assert "node 'gelu_1' (function gelu): not convertible; use ReLU" in msg
    assert "Standard: 5 unsupported node(s)" in msg  # those five, nothing else


def test_token_batchnorm_that_cannot_fold_is_reported():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(4)
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.relu = nn.ReLU()

        def forward(self, x):  # the swapped-back BN output feeds two Linears
            h = self.bn(self.relu(x).transpose(1, 2)).transpose(1, 2)
            return self.fc1(h) + self.fc2(h)

    with pytest.raises(UnsupportedModelError, match=r"'bn' \(BatchNorm1d\): BatchNorm folds"):
        trace(TwoUsers())


def test_nir_export_names_the_token_node_it_cannot_write(tmp_path):
    class Swap(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu, self.head = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.relu(self.fc(x)).transpose(1, 2).transpose(1, 2)[:, 0])

    torch.manual_seed(3)
    snn = onespike.convert(Swap().eval(), torch.rand(32, 5, 4), phases=6, progress=False)
    with pytest.raises(onespike.NIRExportError, match=r"node 'transpose'.*NIR has no transpose"):
        onespike.export_nir(snn, tmp_path / "t.nir")
    assert not (tmp_path / "t.nir").exists()


def test_product_sites_find_where_signed_neurons_go():
    from onespike.trace import product_sites

    traced = trace(Attn().eval())
    sites = product_sites(traced.module)
    assert [s.product for s in sites] == traced.products
    (qk, av) = sites
    # trace puts signed neurons (a SignedSite, the identity in the ANN) after qkv
    assert [n.target for n in qk.sites] == ["qkv_signed"] * 2 and qk.kinds == ("signed",) * 2
    assert qk.sites[0].args[0].target == "qkv"
    assert av.sites[0] is traced.softmaxes[0] and av.kinds == ("softmax", "signed")

    class ReluAttention(nn.Module):  # separate q/k/v, q scaled, ReLU attention / tokens
        def __init__(self, d=8):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.relu = nn.ReLU()

        def forward(self, x):
            q = self.q(x) * 0.25
            a = self.relu(q @ self.k(x).transpose(1, 2)) / x.shape[1]
            return (a @ self.v(x)).mean(1)

    sites = product_sites(trace(ReluAttention()).module)
    targets = [[n.target for n in s.sites] for s in sites]
    assert targets == [["q_signed", "k_signed"], ["relu", "v_signed"]]
    assert [s.kinds for s in sites] == [("signed", "signed"), ("relu", "signed")]
