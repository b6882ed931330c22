"""Hand-off of a pruned model: plain state dict + JSON sidecar, ONNX, and int8, each reloaded and checked.

``lightning-prune export`` (:mod:`lightning_prune.export.cli`) drives it; these functions need no Lightning.
"""

from lightning_prune.errors import ExportError
from lightning_prune.export.artifact import fold_masks, load_state_dict_model, read_sidecar
from lightning_prune.export.checkpoint import CheckpointModel, load_checkpoint_model
from lightning_prune.export.figures import handoff_figures
from lightning_prune.export.int8 import Int8Settings
from lightning_prune.export.onnx_int8 import load_compressed, quantize_onnx
from lightning_prune.export.pipeline import FORMATS, ExportResult, export_checkpoint, export_model
from lightning_prune.export.quantize import check_int8, load_int8, quantize_int8

__all__ = [
    "FORMATS", "CheckpointModel", "ExportError", "ExportResult", "Int8Settings", "check_int8", "export_checkpoint",
    "export_model", "fold_masks", "handoff_figures", "load_checkpoint_model", "load_compressed", "load_int8",
    "load_state_dict_model", "quantize_int8", "quantize_onnx", "read_sidecar",
]
