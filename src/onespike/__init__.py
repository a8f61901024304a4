"""onespike: ANN-to-SNN conversion with single-spike phase coding and base manipulation.

import onespike
snn = onespike.convert(ann, calibration, phases=8)
snn = onespike.convert(ann, calibration, phases=8, search="paper")  # or a SearchConfig
logits = snn(x)                               # event-exact fast path
run = snn.simulate(x, mode="step")            # step-by-step simulator
report = onespike.cost(ann, snn, x)           # ops, spikes, energy
snn = onespike.refine(snn, ann, calibration)  # fit weights and scales to the ANN
snn = onespike.finetune(snn, ann, (x, y), epochs=1)  # with labels: CE + distillation
onespike.save(snn, "net.safetensors")         # one safe file; onespike.load(path)
onespike.export_nir(snn, "net.nir")           # NIR graph (pip install onespike[nir])
"""

from onespike._version import __version__
from onespike.accounting import CostReport, cost
from onespike.calibrate import SEARCH_PRESETS, SearchConfig
from onespike.convert import convert
from onespike.data import DataError
from onespike.distributed import RankDivergenceError, RankMismatchError
from onespike.errors import (
    CalibrationError,
    InputError,
    ModelError,
    OnespikeError,
    OptionError,
    OutputError,
    UnknownNameError,
    UnsupportedModelError,
)
from onespike.finetune import FinetuneConfig, finetune
from onespike.models import PretrainedWeightsNotFoundError
from onespike.network import SimulationResult, SpikeLayer, SpikingNetwork
from onespike.nir_export import NIRExportError, export_nir, import_nir
from onespike.plan import LayerPlan, Plan
from onespike.refine import RefineConfig, refine
from onespike.serialize import (
    CorruptFileError,
    NetworkFileNotFoundError,
    NotANetworkFileError,
    NotSerializableError,
    SerializationError,
    UnsupportedFormatVersionError,
    load,
    save,
)

__all__ = [
    "SEARCH_PRESETS",
    "CalibrationError",
    "CorruptFileError",
    "CostReport",
    "DataError",
    "FinetuneConfig",
    "InputError",
    "LayerPlan",
    "ModelError",
    "NIRExportError",
    "NetworkFileNotFoundError",
    "NotANetworkFileError",
    "NotSerializableError",
    "OnespikeError",
    "OptionError",
    "OutputError",
    "Plan",
    "PretrainedWeightsNotFoundError",
    "RankDivergenceError",
    "RankMismatchError",
    "RefineConfig",
    "SearchConfig",
    "SerializationError",
    "SimulationResult",
    "SpikeLayer",
    "SpikingNetwork",
    "UnknownNameError",
    "UnsupportedFormatVersionError",
    "UnsupportedModelError",
    "__version__",
    "convert",
    "cost",
    "export_nir",
    "finetune",
    "import_nir",
    "load",
    "refine",
    "save",
]
