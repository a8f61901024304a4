"""Converting attention (issue 27, items 2-5 and 7): signed neurons at the operands of
products, products of two spiking tensors (exact in the event path, by traces step by
step), softmax by spike timing, their costs, save/load and the NIR refusal."""

import pytest
import torch
from torch import nn

import onespike
from onespike.codes import phase as pc
from onespike.codes import signed
from onespike.codes import softmax as sm
from onespike.errors import UnsupportedModelError
from onespike.graph import Runner
from onespike.models.vit import ViT
from tests.nets import warm_bn


def _tiny_vit(seed=0, pool="mean"):
    """A 2-block BN/ReLU ViT on 8x8 images (4 tokens of 4x4 patches, width 8, 2 heads),
    its BatchNorms warmed to statistics that are not the identity."""
    torch.manual_seed(seed)
    model = ViT(image_size=8, patch=4, num_classes=3, dim=8, depth=2, heads=2, mlp_dim=16,
                pool=pool)  # fmt: skip
    x = torch.rand(96, 1, 8, 8)
    return warm_bn(model, x), x


@pytest.fixture(scope="module")
def vit():
    model, x = _tiny_vit()
    snn = onespike.convert(model, x, phases=8, progress=False)
    return model, x, snn


def _layer(snn, kind, i=0):
    return [m for m in snn.spikes.values() if m.kind == kind][i]


def test_tiny_vit_converts_with_signed_and_softmax_layers(vit):
    model, x, snn = vit
    assert snn.plan.kinds == ("signed", "softmax", "relu") * 2
    for lp in snn.plan.layers:
        if lp.kind == "softmax":
            assert lp.scale == 1.0  # the winner's value: only the base is searched
    assert "(signed)" in snn.plan.table() and "(softmax)" in snn.plan.table()
    # every layer one window after its sources: qkv 1, softmax 2, relu 3, next block 4..
    assert [lp.fire_window for lp in snn.plan.layers] == [1, 2, 3, 4, 5, 6]
    assert snn.plan.latency_steps == 7 * 8
    with torch.no_grad():
        out, ref = snn(x), model(x)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.15, rel  # really spiking, and close
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.85


def test_step_equals_event_on_the_tiny_vit(vit):
    _, x, snn = vit
    with torch.no_grad():
        ev = snn.simulate(x[:24])
        st = snn.simulate(x[:24], mode="step")
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-5)
    assert ev.spike_phases.keys() == st.spike_phases.keys()
    for name in ev.spike_phases:
        assert torch.equal(ev.spike_phases[name], st.spike_phases[name]), name
        assert torch.equal(ev.spike_counts[name], st.spike_counts[name]), name
    signed_layers = {"blocks_0_attn_qkv_signed", "blocks_1_attn_qkv_signed"}
    assert ev.spike_signs.keys() == st.spike_signs.keys() == signed_layers
    for name in ev.spike_signs:
        assert torch.equal(ev.spike_signs[name], st.spike_signs[name]), name


def test_step_equals_event_in_float64(vit):
    _, x, snn = vit
    with torch.no_grad():
        ev = snn.simulate(x[:8], dtype=torch.float64)
        st = snn.simulate(x[:8], mode="step", dtype=torch.float64)
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-12)


def test_signed_neurons_fire_one_spike_of_either_sign(vit):
    _, x, snn = vit
    with torch.no_grad():
        st = snn.simulate(x[:24], mode="step")
    for name, sign in st.spike_signs.items():
        count = st.spike_counts[name]
        assert int(count.max()) == 1  # at most one spike per neuron
        assert bool(((sign != 0) == (count == 1)).all())  # a sign exactly where a spike is
        assert int((sign > 0).sum()) > 0 and int((sign < 0).sum()) > 0  # both signs


def test_signed_layer_value_is_its_decoded_spikes(vit):
    """The event path's signed layer outputs ``sign * scale * B**-phase``: the decoded
    spikes (codes.signed), and the search picked its scale on |x|."""
    _, x, snn = vit
    layer = _layer(snn, "signed")
    with torch.no_grad():
        ev = snn.simulate(x[:8])
    phase, sign = ev.spike_phases[layer.name], ev.spike_signs[layer.name]
    pre = Runner(snn.graph_module).forward_all(x[:8])
    node = next(n for n in snn.graph_module.graph.nodes if n.target == f"spikes_{layer.name}")
    value = pre[node]
    scale = layer.scale_for(value)
    want = signed.decode_signed(phase, sign, layer.base, scale, layer.phases)
    torch.testing.assert_close(value, want, rtol=1e-6, atol=0)
    lp = snn.plan.layer(layer.name)
    assert lp.kind == "signed" and lp.scale is not None


def test_event_product_is_the_product_of_decoded_values_and_traces_agree(vit):
    """q @ k^T in the converted network is the product of the decoded spikes (event form),
    and the trace form over the spikes' steps gives the same."""
    _, x, snn = vit
    env = Runner(snn.graph_module).forward_all(x[:8])
    products = [n for n in snn.graph_module.graph.nodes if n.name.startswith("matmul")]
    qk = products[0]
    q, kt = (env[a] for a in qk.args[:2])
    torch.testing.assert_close(env[qk], signed.event_matmul(q, kt), rtol=0, atol=0)
    layer = _layer(snn, "signed")
    with torch.no_grad():
        ev = snn.simulate(x[:8])
    ph = ev.spike_phases[layer.name]
    val = signed.decode_signed(ph, ev.spike_signs[layer.name], layer.base,
                               layer.scale_for(ph.double()).double(), layer.phases)  # fmt: skip
    heads = lambda t: t.view(8, 4, 2, 4).transpose(1, 2)  # noqa: E731
    (qp, kp, _), (qv, kv, _) = (tuple(heads(c) for c in t.chunk(3, -1)) for t in (ph, val))
    kp, kv = kp.transpose(-2, -1), kv.transpose(-2, -1)
    traced = signed.trace_matmul(qp, qv, kp, kv, layer.phases)
    torch.testing.assert_close(traced, qv @ kv, rtol=0, atol=1e-12)
    torch.testing.assert_close(traced.float(), q @ kt, rtol=1e-5, atol=1e-6)


def test_softmax_neurons_one_spike_winner_first(vit):
    _, x, snn = vit
    layer = _layer(snn, "softmax")
    with torch.no_grad():
        st = snn.simulate(x[:24], mode="step")
    ph, count = st.spike_phases[layer.name], st.spike_counts[layer.name]
    assert int(count.max()) == 1
    assert bool((ph.amin(dim=-1) == 0).all())  # in every row the winner fires at phase 0
    # the event layer: E / rowsum(E), E the spike-shift code of exp(score - rowmax)
    scores = torch.randn(5, 2, 4, 4)
    want = sm.spike_softmax(scores, layer.base, layer.phases)
    torch.testing.assert_close(layer(scores), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(layer(scores).sum(-1), torch.ones(5, 2, 4))


def test_search_picks_the_softmax_base_by_the_objective(vit):
    """The softmax's base comes from the search's grid, and its recorded errors are those
    of the spike softmax against the ANN's softmax."""
    _, _, snn = vit
    lp = next(lp for lp in snn.plan.layers if lp.kind == "softmax")
    assert lp.base in [round(1.05 + 0.05 * i, 2) for i in range(20)]
    assert 0 < lp.act_error < 0.05


def test_cost_counts_trace_products_and_softmax(vit):
    model, x, snn = vit
    xb = x[:16]
    with torch.no_grad():
        ev = snn.simulate(xb)
        rep = onespike.cost(model, snn, xb, run=ev)
    rows = {r.name: r for r in rep.layers}
    qkv = _layer(snn, "signed")
    ph = ev.spike_phases[qkv.name]
    heads = lambda t: t.view(16, 4, 2, 4).transpose(1, 2)  # noqa: E731
    qp, kp, _ = (heads(c) for c in ph.chunk(3, -1))
    pairs = float(signed.product_pairs(qp, kp.transpose(-2, -1)))
    # q @ k^T lands on the softmax: one AC per pair of spikes, nothing else
    sm_row = rows["softmax"]
    assert sm_row.snn_acs * 16 == pytest.approx(pairs)
    assert sm_row.snn_macs == 0
    # its ANN MACs: 2 heads x 4 x 4 outputs x 4 terms
    assert sm_row.ann_macs == 2 * 4 * 4 * 4
    # accumulator updates: 2 per output and step (one window: q and k fire together),
    # plus the softmax row sums (one add per spike)
    spikes = float(ev.spike_counts["softmax"].sum()) / 16
    assert sm_row.input_updates == pytest.approx(2 * 32 * 8)
    assert sm_row.input_adds == pytest.approx(spikes)
    assert rep.totals["spikes_per_neuron_max"] == 1


def test_save_load_bit_identical(vit, tmp_path):
    _, x, snn = vit
    snn.save(tmp_path / "vit.safetensors")
    back = onespike.load(tmp_path / "vit.safetensors")
    assert back.plan == snn.plan and back.plan.kinds == snn.plan.kinds
    with torch.no_grad():
        assert torch.equal(back(x), snn(x))
        a, b = back.simulate(x[:8], mode="step"), snn.simulate(x[:8], mode="step")
    assert torch.equal(a.output, b.output)
    assert all(torch.equal(a.spike_phases[k], b.spike_phases[k]) for k in a.spike_phases)


def test_nir_export_names_the_attention_nodes(vit, tmp_path):
    _, _, snn = vit
    with pytest.raises(onespike.NIRExportError) as e:
        onespike.export_nir(snn, tmp_path / "v.nir")
    msg = str(e.value)
    assert "'blocks_0_attn_qkv_signed' (signed single-spike neurons)" in msg
    assert "'softmax' (a softmax by spike timing)" in msg
    assert "'matmul' (a product of two spiking tensors)" in msg
    assert not (tmp_path / "v.nir").exists()


def test_class_token_vit_converts_step_equals_event():
    model, x = _tiny_vit(seed=1, pool="cls")
    snn = onespike.convert(model, x, phases=6, progress=False)
    with torch.no_grad():
        ev, st = snn.simulate(x[:16]), snn.simulate(x[:16], mode="step")
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-5)
    assert all(int(c.max()) <= 1 for c in st.spike_counts.values())


class ReluAttention(nn.Module):
    """Attention trained with relu(scores) / N in place of softmax, q scaled before the
    product, separate q, k, v Linears."""

    def __init__(self, d=8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, d), nn.Linear(4, d), nn.Linear(4, d)
        self.relu = nn.ReLU()
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        q = self.q(x) * 0.5
        a = self.relu(q @ self.k(x).transpose(1, 2)) / x.shape[1]
        return self.head((a @ self.v(x)).mean(1))


def test_relu_attention_converts():
    torch.manual_seed(4)
    model = ReluAttention().eval()
    x = torch.randn(128, 5, 4)
    snn = onespike.convert(model, x, phases=8, progress=False)
    assert snn.plan.kinds == ("signed", "signed", "relu", "signed")  # q, k, relu, v
    with torch.no_grad():
        out, ref = snn(x), model(x)
        st = snn.simulate(x[:16], mode="step")
    torch.testing.assert_close(st.output, out[:16], rtol=0, atol=1e-5)
    assert float((out - ref).norm() / ref.norm()) < 0.15


def test_global_base_and_fixed_base_reach_the_softmax():
    model, x = _tiny_vit(seed=2)
    snn = onespike.convert(model, x, phases=6, base=1.5, progress=False)
    assert {lp.base for lp in snn.plan.layers} == {1.5}
    with torch.no_grad():
        ev, st = snn.simulate(x[:8]), snn.simulate(x[:8], mode="step")
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-5)


def test_layernorm_gelu_vit_refused_before_calibration_naming_both():
    model, _ = _tiny_vit()
    model.blocks[0].norm1 = nn.LayerNorm(8)
    model.blocks[1].relu = nn.GELU()
    with pytest.raises(UnsupportedModelError) as e:
        onespike.convert(model, torch.rand(3, 99), phases=8, progress=False)  # bad data: unread
    msg = str(e.value)
    assert "'blocks.0.norm1' (LayerNorm): not convertible; use BatchNorm1d" in msg
    assert "'blocks.1.relu' (GELU): not convertible; use ReLU" in msg


def test_exponential_phase_rule_is_the_phase_code():
    """The softmax layer's phases are the phase code of exp(score - rowmax) (codes.phase),
    the step simulator's fire window gives the same."""
    scores = torch.randn(6, 3, 5) * 2
    z = torch.exp(scores - scores.amax(-1, keepdim=True))
    ph, count = pc.fire(z, 1.4, 8)
    assert torch.equal(ph, sm.exp_phases(scores, 1.4, 8))
    assert torch.equal(count, (ph >= 0).to(torch.int64))


def test_refine_tiny_vit_keeps_softmax_scale_and_base():
    model, x = _tiny_vit(seed=3)
    snn = onespike.convert(model, x, phases=6, progress=False)
    cfg = onespike.RefineConfig(iterations=20, batch_size=32, reconstruct=3, drop=0.2,
                                bases=True, holdout=0.0, margin=0)  # fmt: skip
    r = onespike.refine(snn, model, x, cfg, progress=False)
    for old, new in zip(snn.plan.layers, r.plan.layers):
        assert new.kind == old.kind
        if new.kind == "softmax":
            assert new.scale == 1.0 and new.base == old.base
    with torch.no_grad():
        ev, st = r.simulate(x[:8]), r.simulate(x[:8], mode="step")
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-5)


def test_bias_correction_on_token_linears():
    """Bias correction shifts a Linear's bias per feature (the last dimension of a token
    tensor), and the converted network stays consistent."""
    model, x = _tiny_vit(seed=4)
    plain = onespike.convert(model, x, phases=6, progress=False)
    snn = onespike.convert(model, x, phases=6, bias_correction=True, progress=False)
    changed = [
        k for k, v in snn.graph_module.state_dict().items()
        if k.endswith("bias") and not torch.equal(v, plain.graph_module.state_dict()[k])
    ]  # fmt: skip
    assert changed
    with torch.no_grad():
        ev, st = snn.simulate(x[:8]), snn.simulate(x[:8], mode="step")
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-5)


def _dist_worker(rank: int, world: int, port: int, out: str) -> None:
    import datetime
    import traceback

    import torch.distributed as dist

    torch.set_num_threads(1)
    result: dict = {}
    try:
        wait = datetime.timedelta(seconds=30)
        url = f"tcp://127.0.0.1:{port}"
        dist.init_process_group("gloo", init_method=url, rank=rank, world_size=world, timeout=wait)
        result.update(_dist_job())
        dist.destroy_process_group()
    except Exception:
        result["crash"] = traceback.format_exc()
    torch.save(result, f"{out}/rank{rank}.pt")


def _dist_job() -> dict:
    """What the distributed test compares: the plan of a conversion from 600 samples (more
    than the 256 search samples and the 512 of a statistics chunk: the ranks share out the
    statistics) and an evaluation with the step simulator and costs."""
    from onespike.evaluate import evaluate

    model, _ = _tiny_vit(seed=5)
    x = torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    snn = onespike.convert(model, x, phases=6, progress=False)
    plan = [(lp.name, lp.kind, lp.base, lp.scale, lp.act_error, lp.out_error)
            for lp in snn.plan.layers]  # fmt: skip
    y = model(x[:96]).argmax(1)
    res = evaluate(model, snn, x[:96], y, batch_size=32, progress=False)
    return {"plan": plan, "eval": (res.snn_accuracy, res.step_accuracy, res.phase_mismatches,
                                   res.max_spikes_per_neuron, res.cost.totals)}  # fmt: skip


def test_two_ranks_convert_and_evaluate_the_tiny_vit_like_one_process(tmp_path):
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("no torch.distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, res in enumerate(ranks):
        assert "crash" not in res, f"rank {r} crashed:\n{res['crash']}"
    one = _dist_job()
    assert ranks[0]["plan"] == ranks[1]["plan"] == one["plan"]  # bit for bit
    assert ranks[0]["eval"] == ranks[1]["eval"] == one["eval"]
    assert one["eval"][3] == 1  # one spike per neuron at most


def test_ann_macs_count_each_layer_once(vit):
    """The residual stream has no ReLU, so every later region holds it; the ANN still
    computes each layer once: the report's MACs are the ViT's own count."""
    model, x, snn = vit
    rep = onespike.cost(model, snn, x[:4])
    embed = 4 * 8 * 16  # 4 tokens x 8 channels x a 4x4 patch
    block = 4 * 8 * 24 + 2 * (2 * 4 * 4 * 4) + 4 * 8 * 8 + 4 * 8 * 16 + 4 * 16 * 8
    assert rep.totals["ann_macs"] == embed + 2 * block + 8 * 3  # qkv, 2 products, proj, MLP
    # the analog patch embedding's MACs are counted once on the SNN side too
    assert rep.layers[0].snn_macs == embed + 4 * 8 * 24  # and qkv on the dense stream


def test_per_layer_windows_step_equals_event():
    """Windows of their own: attention @ v pairs v's spikes (the qkv layer's window) with
    the softmax's (a later, longer one) on the global clock; step == event in float64."""
    model, x = _tiny_vit(seed=6)
    snn = onespike.convert(model, x, phases=6, windows=[4, 7, 5, 6, 3, 8], progress=False)
    assert snn.plan.windows == (4, 7, 5, 6, 3, 8)
    assert snn.plan.latency_steps == 6 + 4 + 7 + 5 + 6 + 3 + 8  # the input's window, then each
    with torch.no_grad():
        ev = snn.simulate(x[:8], dtype=torch.float64)
        st = snn.simulate(x[:8], mode="step", dtype=torch.float64)
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-12)
    assert all(torch.equal(ev.spike_phases[k], st.spike_phases[k]) for k in ev.spike_phases)


@pytest.mark.parametrize(
    ("layer", "key", "value", "needle"),
    [
        (0, "kind", "relu", "'blocks_0_attn_qkv_signed' is of kind 'relu' in the plan; its"),
        (1, "kind", "signed", "'softmax' is of kind 'signed' in the plan; its place in the"),
        (2, "kind", "gelu", "'blocks.0.relu' is of kind 'gelu' in the plan"),
        (1, "scale", 2.0, "'softmax' is a softmax of scale 2.0; its scale is 1"),
    ],
)
def test_a_file_whose_kinds_disagree_with_its_graph_is_refused(vit, tmp_path, layer, key,
                                                               value, needle):  # fmt: skip
    """An edited plan (checksum recomputed) cannot make a signed layer a ReLU layer or a
    softmax's scale other than 1: load names the layer."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from onespike import serialize

    _, _, snn = vit
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    snn.save(src)
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    plan = json.loads(meta["plan"])
    plan["layers"][layer][key] = value
    meta["plan"] = json.dumps(plan, separators=(",", ":"))
    meta["sha256"] = serialize.file_digest(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)
    with pytest.raises(serialize.CorruptFileError, match="damaged") as e:
        onespike.load(dst)
    assert needle in str(e.value)


def test_signed_inputs_put_the_residual_stream_on_spikes(tmp_path):
    """signed="inputs": signed neurons also on the residual stream, attention's output and
    the token mean, so every Linear but the patch embedding reads spikes (ACs, no MACs);
    step == event, save/load bit-identical."""
    model, x = _tiny_vit(seed=0)
    snn = onespike.convert(model, x, phases=8, signed="inputs", progress=False)
    assert snn.plan.search["signed"] == "inputs"
    per_block = ("signed", "signed", "softmax", "signed", "signed", "relu")
    assert snn.plan.kinds == per_block * 2 + ("signed",)  # stream, qkv, sm, out, stream, mlp
    assert snn.plan.latency_steps == (1 + 13) * 8
    rep = onespike.cost(model, snn, x[:8])
    assert rep.layers[0].snn_macs == 4 * 8 * 16  # the patch embedding on the analog input
    assert sum(r.snn_macs for r in rep.layers[1:]) == 0
    with torch.no_grad():
        out, ref = snn(x), model(x)
        ev = snn.simulate(x[:8], dtype=torch.float64)
        st = snn.simulate(x[:8], mode="step", dtype=torch.float64)
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-12)
    assert float((out - ref).norm() / ref.norm()) < 0.15  # measured 0.084 (operands: 0.020)
    snn.save(tmp_path / "s.safetensors")
    back = onespike.load(tmp_path / "s.safetensors")
    with torch.no_grad():
        assert torch.equal(back(x), out)


def test_signed_option_checked_before_any_data():
    model, _ = _tiny_vit()
    with pytest.raises(onespike.OptionError, match=r"signed must be one of \('operands', "):
        onespike.convert(model, torch.rand(3, 99), phases=8, signed="all", progress=False)


def test_code_comparison_refuses_attention_naming_the_layers():
    from onespike.simulate_codes import CodeNet
    from onespike.trace import trace

    model, _ = _tiny_vit()
    with pytest.raises(UnsupportedModelError, match=r"ReLU networks only") as e:
        CodeNet(trace(model))
    assert "blocks_0_attn_qkv_signed" in str(e.value) and "matmul_1" in str(e.value)


def test_finetune_tiny_vit_with_labels():
    model, x = _tiny_vit(seed=8)
    y = model(x).argmax(1)
    snn = onespike.convert(model, x, phases=6, progress=False)
    ft = onespike.finetune(snn, model, (x, y), epochs=2, margin=0, progress=False)
    assert ft.plan.kinds == snn.plan.kinds
    assert [lp.scale for lp in ft.plan.layers if lp.kind == "softmax"] == [1.0, 1.0]
    with torch.no_grad():
        ev = ft.simulate(x[:8], dtype=torch.float64)
        st = ft.simulate(x[:8], mode="step", dtype=torch.float64)
    torch.testing.assert_close(st.output, ev.output, rtol=0, atol=1e-12)


def _pairs(run, snn, i):
    """Pairs of spikes of block ``i``'s two products (q @ k^T, softmax @ v), from the spike
    counts: one AC each."""
    qkv = [m for m in snn.spikes.values() if m.kind == "signed" and "qkv" in m.name][i]
    smax = [m for m in snn.spikes.values() if m.kind == "softmax"][i]
    c = run.spike_counts[qkv.name].double()
    q, k, v = (t.view(*t.shape[:2], 2, 4).transpose(1, 2) for t in c.chunk(3, -1))
    s = run.spike_counts[smax.name].double()
    return float((q @ k.transpose(-2, -1)).sum() + (s @ v).sum())


@pytest.mark.parametrize("mode", ["operands", "inputs"])
def test_snn_acs_count_each_spike_once_where_it_is_consumed(mode):
    """Each spike costs one AC per synapse of the Linear that receives it, once, however
    many later regions hold the residual stream it lands on (a hand count from the spike
    counts: fan-outs of the tiny ViT's Linears, pairs of the products)."""
    model, x = _tiny_vit(seed=0)
    snn = onespike.convert(model, x, phases=8, signed=mode, progress=False)
    xb = x[:16]
    with torch.no_grad():
        run = snn.simulate(xb)
        rep = onespike.cost(model, snn, xb, run=run)
    # the Linear reading each spiking layer, by its out_features: qkv 24, fc1 16, proj and
    # fc2 8, the head 3 (operands: only the MLP's ReLU feeds a Linear, fc2); the stream's
    # signed spikes also land on the next add (the shortcut: one AC each)
    fan_out = {"blocks.0.relu": 8, "blocks.1.relu": 8}
    if mode == "inputs":  # the stream before qkv / fc1, attention's output, the token mean
        fan_out |= {"add_signed": 24 + 1, "add_1_signed": 16 + 1, "add_2_signed": 24 + 1}
        fan_out |= {"add_3_signed": 16 + 1, "matmul_1_signed": 8, "matmul_3_signed": 8}
        fan_out |= {"mean_signed": 3}
    hand = sum(_pairs(run, snn, i) for i in range(2))
    hand += sum(float(run.spike_counts[name].sum()) * f for name, f in fan_out.items())
    assert rep.totals["snn_acs"] * 16 == pytest.approx(hand, rel=1e-9)
    assert sum(r.snn_acs for r in rep.layers) == pytest.approx(rep.totals["snn_acs"])
    if mode == "operands":  # block 0's fc2 spikes land on the stream block 1's qkv reads
        rows = {r.name: r for r in rep.layers}
        relu0 = float(run.spike_counts["blocks.0.relu"].sum()) * 8
        assert rows["blocks_1_attn_qkv_signed"].snn_acs * 16 == pytest.approx(relu0)


def test_spike_tolerance_trades_error_for_fewer_spikes(tmp_path):
    """spike_tolerance=t: each layer takes the fewest spikes among the candidates that add
    at most (1 + t) times the least error it can add, so the network fires fewer spikes
    and stays close to the ANN; recorded in the plan; a bad value is refused."""
    model, x = _tiny_vit(seed=2)
    base = onespike.convert(model, x, phases=8, progress=False)
    sparse = onespike.convert(model, x, phases=8, spike_tolerance=0.5, progress=False)
    assert sparse.plan.search["spike_tolerance"] == 0.5
    assert "spike_tolerance" not in base.plan.search
    with torch.no_grad():
        a, b = base.simulate(x), sparse.simulate(x)
    fired = {k: float(a.spike_counts[k].sum()) for k in a.spike_counts}
    fewer = {k: float(b.spike_counts[k].sum()) for k in b.spike_counts}
    assert sum(fewer.values()) < sum(fired.values())
    ref = model(x).detach()
    err = [float((r.output - ref).norm() / ref.norm()) for r in (a, b)]
    assert err[1] < 0.15 and err[1] < 3 * err[0], err  # still close to the ANN
    sparse.save(tmp_path / "s.safetensors")
    back = onespike.load(tmp_path / "s.safetensors")
    assert back.plan.search == sparse.plan.search
    with torch.no_grad():
        assert torch.equal(back(x), sparse(x))
    for bad in (-0.1, True, "x", float("inf")):
        with pytest.raises(onespike.OptionError, match="spike_tolerance must be a number"):
            onespike.convert(model, x, phases=8, spike_tolerance=bad, progress=False)


def test_stream_accumulators_counted_once():
    """The residual stream that no neurons hold is accumulated once, where it is first
    held, not in the compartments of every later layer that reads it by MACs (a hand
    count on the tiny ViT at T = 8, windows of 8 steps: the input [0, 8), qkv [8, 16),
    softmax [16, 24), block 0's ReLU [24, 32))."""
    model, x = _tiny_vit(seed=0)
    snn = onespike.convert(model, x, phases=8, progress=False)
    with torch.no_grad():
        rep = onespike.cost(model, snn, x[:16])
    rows = {r.name: r for r in rep.layers}
    stream = 4 * 8  # tokens x width
    # block 0's ReLU: fc1 reads the stream (analog current accumulated there, 8 steps);
    # its own row adds attention @ v's accumulators: 2 per output and step over the 16
    # steps of v's and the softmax's windows, one multiply per output, one reciprocal per row
    assert rows["blocks.0.relu"].input_adds == 8 * stream
    assert rows["blocks.0.relu"].input_updates == 2 * 32 * 16 + 32 + 8
    # block 1's qkv: block 0's fc2 spikes accumulated on the stream (one base, 8 steps)
    assert rows["blocks_1_attn_qkv_signed"].input_updates == 8 * stream
    assert rows["blocks_1_attn_qkv_signed"].input_adds == 0
    assert rows["blocks.1.relu"].input_adds == 0  # the stream's current counted once
    # the last stream add is held by the output's region alone: its three neurons integrate
    assert rows["output"].input_updates == 8 * 3 and rows["output"].input_adds == 0
