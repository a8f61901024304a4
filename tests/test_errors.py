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
