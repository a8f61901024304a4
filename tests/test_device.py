"""Every public entry point runs on the model's device: calibration and search, both
simulators, cost accounting, evaluation, save/load and NIR. On CPU always; on CUDA when
one is present (skipped otherwise, with the reason). A third test makes the default
device ``meta``: a tensor that library code creates without ``device=`` then lands there
and fails the run, so CPU-only creation is caught on a machine without a GPU."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import onespike
from onespike.evaluate import evaluate
from tests.nets import make

X = torch.rand(160, 2, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 5, (160,), generator=torch.Generator().manual_seed(1))
CUDA = torch.cuda.is_available()


def _every_entry_point(device: str, tmp_path, model=None, loader=None) -> dict:
    """Run each public entry point with the model on ``device`` and the data on the CPU
    (a DataLoader, as a user has it); return what each produced."""
    model = (make(7) if model is None else model).to(device)
    loader = DataLoader(TensorDataset(X, Y), batch_size=40) if loader is None else loader
    out = {}
    for coding in ("analog", "single", "binary"):
        snn = onespike.convert(
            model, loader, phases=5, search_samples=64, input_coding=coding, progress=False
        )
        x = X[:32].to(device)
        ev, st = snn.simulate(x), snn.simulate(x, mode="step")
        assert ev.output.device == x.device and st.output.device == x.device
        assert torch.equal(ev.output.argmax(1), st.output.argmax(1))
        for k, ph in ev.spike_phases.items():
            assert ph.device == x.device and torch.equal(ph, st.spike_phases[k])
        rep = onespike.cost(model, snn, x)
        res = evaluate(model, snn, loader, batch_size=50, progress=False)
        path = tmp_path / f"{device}_{coding}.safetensors"
        onespike.save(snn, path)
        back = onespike.load(path, device=device)
        assert torch.equal(back(x), snn(x))
        out[coding] = (snn, rep, res, x)
    try:
        import nir  # noqa: F401
    except ImportError:
        return out
    from onespike import nir_reference

    snn, _, _, x = out["analog"]
    path = tmp_path / f"{device}.nir"
    onespike.export_nir(snn, path)
    back = onespike.import_nir(path, device=device)
    assert torch.equal(back(x), snn(x))
    ref = nir_reference.simulate(path, x)
    assert ref.output.device == x.device
    assert torch.equal(ref.output.argmax(1), snn(x).argmax(1))
    return out


def test_every_entry_point_on_cpu(tmp_path):
    out = _every_entry_point("cpu", tmp_path)
    snn, rep, res, _ = out["analog"]
    assert snn.spikes["relu1"].scale.device.type == "cpu"
    assert rep.totals["snn_acs"] > 0 and res.samples == 160


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_every_entry_point_on_cuda(tmp_path):
    out = _every_entry_point("cuda", tmp_path)
    cpu = _every_entry_point("cpu", tmp_path)
    for coding in out:
        snn, rep, res, _ = out[coding]
        assert snn.spikes["relu1"].scale.device.type == "cuda"
        # the same network up to float rounding: accuracies within two images of 160
        assert abs(res.snn_accuracy - cpu[coding][2].snn_accuracy) <= 100 * 2 / 160
        assert rep.totals["ann_macs"] == cpu[coding][1].totals["ann_macs"]


def test_no_tensor_is_created_on_the_default_device(tmp_path):
    """The model and data are on the CPU, the default device is ``meta``: a tensor made
    without ``device=`` would be a meta tensor, and computing with it fails."""
    model = make(7)
    batches = [(X[i : i + 40], Y[i : i + 40]) for i in range(0, 160, 40)]  # no DataLoader:
    torch.set_default_device("meta")  # it seeds its workers on the default device
    try:
        meta = _every_entry_point("cpu", tmp_path, model, batches)
    finally:
        torch.set_default_device(None)
    # ... and every figure is the one of a run with the default device left alone
    plain = _every_entry_point("cpu", tmp_path, make(7), batches)
    for coding, (snn, rep, res, x) in meta.items():
        snn0, rep0, res0, _ = plain[coding]
        assert snn.plan == snn0.plan, coding
        assert torch.equal(snn(x), snn0(x)), coding
        assert rep.totals == rep0.totals and res.to_dict() == res0.to_dict(), coding
        assert snn(x).device.type == "cpu" and res.samples == 160
