"""onespike's error types: every user mistake is an OnespikeError; a bug is not."""

from __future__ import annotations

import pytest
import torch

import onespike
from onespike.codes import phase as pc
from onespike.data import DataError, load_dataset
from onespike.errors import (
    CalibrationError,
    InputError,
    OnespikeError,
    OptionError,
    UnknownNameError,
    UnsupportedModelError,
    run_command,
)
from onespike.models import PretrainedWeightsNotFoundError, get_model, load_pretrained
from tests.nets import make


@pytest.mark.parametrize(
    ("kind", "old_base"),
    [
        (OptionError, ValueError),
        (InputError, ValueError),
        (CalibrationError, ValueError),
        (UnsupportedModelError, ValueError),
        (UnknownNameError, KeyError),
        (PretrainedWeightsNotFoundError, FileNotFoundError),
        (DataError, Exception),
    ],
)
def test_user_errors_share_one_base_and_keep_their_old_one(kind, old_base):
    assert issubclass(kind, OnespikeError) and issubclass(kind, old_base)


def test_the_library_raises_its_own_types(tmp_path):
    model = make(0)
    x = torch.rand(16, 2, 8, 8)
    with pytest.raises(OptionError, match="phases"):
        onespike.convert(model, x, phases=0)
    with pytest.raises(OptionError, match="base"):
        pc.check_params(2.5, 4)
    with pytest.raises(CalibrationError, match="empty"):
        onespike.convert(model, torch.zeros(0, 2, 8, 8), phases=4)
    snn = onespike.convert(model, x, phases=4, progress=False)
    with pytest.raises(InputError, match="NaN"):
        snn(torch.full((2, 2, 8, 8), float("nan")))
    with pytest.raises(OptionError, match="mode"):
        snn.simulate(x, mode="fast")
    with pytest.raises(UnsupportedModelError, match="GELU"):
        onespike.convert(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GELU()), x, phases=4)
    with pytest.raises(UnknownNameError, match="unknown model 'vgg99'") as e:
        get_model("vgg99")
    assert str(e.value).startswith("unknown model")  # not quoted like a KeyError
    with pytest.raises(PretrainedWeightsNotFoundError):
        load_pretrained("mnist_cnn", root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", "test")


def test_run_command_reports_mistakes_and_lets_bugs_through(capsys):
    def mistake() -> int:
        raise OptionError("phases must be an integer >= 1, got 0")

    assert run_command(mistake) == 2
    assert capsys.readouterr().err == "error: phases must be an integer >= 1, got 0\n"

    def bug() -> int:
        raise ValueError("an invariant broke")

    with pytest.raises(ValueError, match="an invariant broke"):
        run_command(bug)
    assert run_command(lambda: 0) == 0


# --------------------------------------------------------------------------- issue 25


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = make(0)
    x = torch.rand(16, 2, 8, 8)
    return model, x, onespike.convert(model, x, phases=4, progress=False)


@pytest.mark.parametrize("cast", [torch.float16, torch.float64, torch.bfloat16])
def test_an_input_of_another_dtype_is_refused_naming_both(small, cast):
    _, x, snn = small
    with pytest.raises(InputError, match=rf"dtype {cast}.*computes in torch.float32"):
        snn(x.to(cast))
    with pytest.raises(InputError, match="dtype"):
        snn.simulate(x.to(cast), mode="step")
    # asking for the precision casts on purpose: no error
    run = snn.simulate(x.double(), dtype=torch.float64)
    assert run.output.dtype == torch.float64


def test_an_input_on_the_meta_device_is_refused(small):
    _, x, snn = small
    with pytest.raises(InputError, match="meta device"):
        snn(x.to("meta"))


def test_a_model_with_nan_or_meta_weights_is_refused_before_any_work(small):
    from onespike.errors import ModelError

    _, x, _ = small
    bad = make(0)
    with torch.no_grad():
        bad.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"'conv1.weight' holds 1 NaN or Inf"):
        onespike.convert(bad, x, phases=4, progress=False)
    bad = make(0)
    bad.bn1.running_var.fill_(float("inf"))
    with pytest.raises(ModelError, match=r"buffer 'bn1\.running_var'"):
        onespike.convert(bad, x, phases=4, progress=False)
    with pytest.raises(ModelError, match="meta device"):
        onespike.convert(make(0).to("meta"), x, phases=4, progress=False)
    assert issubclass(ModelError, OnespikeError) and issubclass(ModelError, ValueError)


@pytest.mark.parametrize("cast", [torch.float64, torch.float16])
def test_calibration_of_another_dtype_is_a_dtype_error(small, cast):
    model, x, _ = small
    with pytest.raises(CalibrationError, match=rf"dtype {cast}, the model's weights"):
        onespike.convert(model, x.to(cast), phases=4, progress=False)


def test_absurd_phases_are_refused_with_the_bound(small):
    from onespike.errors import MAX_PHASES

    model, x, _ = small
    for bad in (MAX_PHASES + 1, 1_000_000):
        with pytest.raises(OptionError, match=f"more than {MAX_PHASES}"):
            onespike.convert(model, x, phases=bad, progress=False)


def test_evaluate_refuses_what_would_give_silent_wrong_figures(small):
    from onespike.evaluate import evaluate

    model, x, snn = small
    y = torch.arange(16) % 5
    kw = {"progress": False, "step": False, "costs": False}
    assert evaluate(model, snn, x, y, **kw).samples == 16
    with pytest.raises(OptionError, match="batch_size"):
        evaluate(None, snn, x, y, batch_size=0, **kw)
    with pytest.raises(InputError, match=r"span \[20, 24\].*5 classes"):
        evaluate(None, snn, x, y + 20, **kw)
    with pytest.raises(InputError, match=r"span \[-5, -1\]"):
        evaluate(None, snn, x, -y - 1, **kw)
    with pytest.raises(InputError, match="one-hot"):
        evaluate(None, snn, x, torch.nn.functional.one_hot(y, 5), **kw)
    with pytest.raises(InputError, match="whole numbers"):
        evaluate(None, snn, x, y + 0.5, **kw)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, 7))
    with pytest.raises(OptionError, match=r"ANN gives outputs \(1, 7\).*\(1, 5\)"):
        evaluate(other, snn, x, y, **kw)
    # a stream: each batch's labels are checked before its work
    stream = [(x[:8], y[:8]), (x[8:], y[8:] + 10)]
    with pytest.raises(InputError, match=r"batch 1"):
        evaluate(None, snn, stream, batch_size=8, **kw)


@pytest.mark.parametrize("device", ["gpu7", "cuda:99", "meta"])
def test_check_device_names_the_mistake(device):
    from onespike.errors import check_device

    if device == "cuda:99" or not torch.cuda.is_available():
        with pytest.raises(OptionError, match=r"device|CUDA|GPU"):
            check_device(device)
    assert check_device("cpu") == "cpu" and check_device(None) is None


def test_every_error_type_is_importable_from_onespike() -> None:
    """Users catch onespike's errors without knowing which module raises them."""
    import inspect

    from onespike import errors, nir_export, serialize

    exported = {n for n in onespike.__all__ if n.endswith("Error")}
    for module in (errors, serialize, nir_export):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, onespike.OnespikeError):
                assert name in exported, f"{module.__name__}.{name} is not in onespike.__all__"
    for name in exported:
        assert issubclass(getattr(onespike, name), onespike.OnespikeError), name


def test_unsupported_layers_are_named_on_one_line() -> None:
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Tanh(), nn.ReLU())
    with pytest.raises(onespike.UnsupportedModelError) as info:
        onespike.convert(model, torch.rand(8, 4), phases=4, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "2 unsupported node(s)" in msg
    assert "Sigmoid" in msg and "Tanh" in msg
