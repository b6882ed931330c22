"""int8 ONNX Runtime models and the bytes a device downloads: checked on export, and the ladder built from them."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import torch

from lightning_prune.export import export_model
from lightning_prune.export.onnx_export import onnx_runner, onnx_session
from lightning_prune.export.onnx_int8 import check_onnx_int8, load_compressed
from lightning_prune.models import VGG
from lightning_prune.pruning.unstructured import apply_magnitude_pruning, make_permanent
from lightning_prune.report.handoff import ladder
from lightning_prune.report.stats import Stat
from tests.helpers import TINY_CLASSIFIER


def _pruned(tiny_channels) -> VGG:
    model = VGG(10, tiny_channels, TINY_CLASSIFIER)
    apply_magnitude_pruning(model, {"features.3": 0.7, "features.10": 0.9, "classifier.0": 0.8})
    return make_permanent(model).eval()


@pytest.mark.slow
def test_int8_onnx_keeps_zeros_and_widths_and_the_compressed_file_reloads_to_the_same_outputs(tmp_path,
                                                                                              tiny_channels):
    torch.manual_seed(0)
    model, x = _pruned(tiny_channels), torch.randn(8, 3, 32, 32)
    result = export_model(model, tmp_path, "v", ["onnx"], x, calibration_batches=[torch.randn(16, 3, 32, 32)])
    assert {"int8_onnx", "compressed"} <= set(result.files)
    check = result.metadata["int8_onnx"]
    assert check["zeros_preserved"] and check["zero_points_zero"] and check["widths_kept"] and check["layers"] == 16
    assert check["int8_zeros"] >= check["float_zeros"] > 0
    data = result.files["compressed"].read_bytes()
    assert lzma.decompress(data) == result.files["int8_onnx"].read_bytes() and len(data) < result.files[
        "int8_onnx"].stat().st_size
    unpacked, direct = onnx_runner(load_compressed(result.files["compressed"])), onnx_runner(
        onnx_session(result.files["int8_onnx"]))
    assert torch.equal(unpacked(x), direct(x))
    assert (onnx_runner(result.int8_onnx)(x) - model(x)).abs().max() < 0.5  # int8, close to the float logits
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert sidecar["files"]["int8_onnx"] == "v.int8.onnx" and sidecar["files"]["compressed"] == "v.int8.onnx.xz"


@pytest.mark.slow
def test_an_int8_onnx_model_that_loses_a_zero_is_refused(tmp_path, tiny_channels, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from lightning_prune.export import onnx_int8

    real = onnx_int8.quantize_onnx

    def broken(float_path, out_path, calibration, method):
        real(float_path, out_path, calibration, method)
        graph = onnx.load(str(out_path))
        tensor = next(t for t in graph.graph.initializer if t.name == "features.3.weight_quantized")
        values = numpy_helper.to_array(tensor).copy()
        values[values == 0] = 1  # a pruned weight comes back
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        onnx.save(graph, str(out_path))
        return out_path

    monkeypatch.setattr("lightning_prune.export.pipeline.quantize_onnx", broken)
    from lightning_prune.errors import ExportError

    with pytest.raises(ExportError, match="int8 onnx: quantization changed the pruned structure"):
        export_model(_pruned(tiny_channels), tmp_path, "v", ["onnx"], torch.randn(4, 3, 32, 32),
                     calibration_batches=[torch.randn(8, 3, 32, 32)])
    assert not check_onnx_int8(tmp_path / "v.onnx", tmp_path / "v.int8.onnx").zeros_preserved


def _record(task, seed, top1, size, compressed=None, lineage=(), structure="dense", int8_top1=None):
    variant = f"x_{'compound' if lineage else task}_v{seed}"
    return {"dataset": "cifar10", "task": task, "seed": seed, "structure": structure, "lineage": list(lineage),
            "variant": variant,
            "float_top1": top1, "float_size_mb": size, "float_compressed_mb": size * 0.9, "macs": 20_000_000,
            "nonzero_params": 1000, "onnx_latency_ms": 5.0, "int8_onnx_latency_ms": 2.0,
            "int8_onnx_size_mb": size / 4, "compressed_mb": compressed, "int8_onnx_top1": int8_top1}


def test_the_ladder_rungs_and_its_goal():
    records = []
    for seed, (dense, chain) in enumerate([(70.0, 69.5), (71.0, 70.4), (69.0, 68.6)]):
        records += [_record("baseline", seed, dense, 5.0),
                    _record("channel", seed, dense - 1, 1.0, structure="narrow"),
                    _record("unstructured", seed, chain + 0.5, 1.0, 0.1, ["channel"], "narrow+masked", chain)]
    table, goal = ladder(records)
    rows = [line.strip("| ").split(" | ") for line in table.splitlines()[2:]]
    assert [r[0] for r in rows] == ["1. dense fp32", "2. channel-pruned", "3. + unstructured", "4. + int8",
                                    "5. + compression"]
    assert rows[0][-1] == "1.0 / 1.1" and rows[4][2].startswith("0.100") and rows[4][-1] == "50.0 / 50.0"
    assert rows[0][7].startswith("70.00 ± ") and rows[4][7].startswith("69.50 ± ")  # top-1 over three seeds
    # 50x smaller (>= 49x), paired drops 0.5, 0.6, 0.4 points: the 95 % interval (up to 0.75) within 2 points
    assert "**reached**" in goal and "50.0x smaller" in goal and "0.50 ± 0.25 (n=3)" in goal
    assert "49x smaller" in goal and "within 2 points" in goal
    records[-1]["int8_onnx_top1"] = 66.0  # seed 2 loses 3 points: the mean drop is 1.37, its interval reaches 4.6
    assert "**not reached**" in ladder(records)[1] and "not within the budget" in ladder(records)[1]
    assert ladder(records[:2]) is None  # no chained model: no ladder
    assert isinstance(Stat([1.0, 2.0]).ci95, float) and np.isfinite(Stat([1.0, 2.0]).ci95)


def test_the_ladder_takes_the_channel_run_the_chain_started_from_and_skips_refused_exports():
    records = []
    for seed in range(2):
        chain = _record("unstructured", seed, 69.0, 1.0, 0.1, ["channel"], "narrow+masked", 68.5)
        chain["lineage_sources"] = [f"checkpoints/c70/version_{seed}/last.ckpt"]
        mild = _record("channel", seed, 68.0, 2.0, structure="narrow")
        mild["source_checkpoint"] = f"checkpoints/c70/version_{seed}/last.ckpt"
        harsh = _record("channel", seed, 50.0, 0.5, structure="narrow")
        harsh["source_checkpoint"] = f"checkpoints/c90/version_{seed}/last.ckpt"
        records += [_record("baseline", seed, 70.0, 5.0), harsh, mild, chain]
    rows = [line.strip("| ").split(" | ") for line in ladder(records)[0].splitlines()[2:]]
    assert rows[1][2].startswith("2.000") and rows[1][7].startswith("68.00")  # the 70 % run, not the 90 % one
    other_chain = {**records[-1], "variant": "x_compound_c90_v1", "int8_onnx_top1": 1.0}  # not compound.yaml's run
    rows = [line.strip("| ").split(" | ") for line in ladder(records + [other_chain])[0].splitlines()[2:]]
    assert rows[3][7].startswith("68.50")
    refused = {**records[-1], "int8_onnx_top1": 10.0, "refused": True}
    rows = [line.strip("| ").split(" | ") for line in ladder(records[:-1] + [refused])[0].splitlines()[2:]]
    assert rows[3][7] == "68.50"  # one seed left: the refused chain is not a rung
