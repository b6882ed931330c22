"""Hand-off: state dict + sidecar, ONNX (ONNX Runtime parity), int8 keeping the pruning, the export CLI.

One real Lightning fit (1 batch, magnitude masks applied at fit start) makes the checkpoint that the
CLI exports once per module; the other tests read what it wrote or use hand-built checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_prune.callbacks.run import LastCheckpoint
from lightning_prune.checkpoint_io import mark_finished
from lightning_prune.data import ImageDataModule
from lightning_prune.export import (
    ExportError,
    check_int8,
    export_checkpoint,
    export_model,
    fold_masks,
    load_checkpoint_model,
    load_int8,
    load_state_dict_model,
    pipeline,
    quantize_int8,
    read_sidecar,
)
from lightning_prune.export.cli import main as export_main
from lightning_prune.export.quantize import int8_weights
from lightning_prune.models import VGG, scaled_channels, vgg16_bn
from lightning_prune.module import ImageClassifier
from lightning_prune.profiling.static import count_macs
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import apply_magnitude_pruning
from lightning_prune.report.handoff import handoff_section, handoff_table
from tests.helpers import TINY_CLASSIFIER, TINY_WIDTH, fit_head

pytestmark = pytest.mark.slow  # processes, exports, whole demos: `pytest -m "not slow"` skips them

EXPERIMENT = "tiny_unstructured"
VARIANT = f"{EXPERIMENT}_v0"  # an export names each run by experiment and version
SPARSITY = 0.6


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and two OpenMP threads crawl on a shared 2-core CPU."""
    torch.set_num_threads(1)


class PruneAtFitStart(L.Callback):
    """Magnitude masks on every conv/linear before training, as MagnitudePruning does."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        apply_magnitude_pruning(pl_module.model, dict.fromkeys(prunable_modules(pl_module.model), SPARSITY))


@pytest.fixture(scope="module")
def digits() -> ImageDataModule:
    dm = ImageDataModule("digits", batch_size=32, num_workers=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, digits) -> dict[str, Path]:
    """A masked run in the CLI's layout, fitted for one batch, then exported by the CLI with --quantize."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    ckpt_dir = root / "logs" / EXPERIMENT / "version_0" / "checkpoints"
    (root / "logs" / EXPERIMENT / "version_0").mkdir(parents=True)
    module = ImageClassifier(10, scaled_channels(TINY_WIDTH), classifier_width=TINY_CLASSIFIER, lr=0.01)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        callbacks=[PruneAtFitStart(), LastCheckpoint(ckpt_dir)],
    )
    trainer.fit(module, digits)
    mark_finished(ckpt_dir)  # what the CLI's run identity does when a fit ends normally
    argv = ["--run", f"run:{EXPERIMENT}", "--logs", str(root / "logs"),
            "--quantize", "--eval-batches", "2", "--calibration-images", "64", "--latency-batches", "2",
            "--threads", "1", "--max-int8-drop", "100"]  # an untrained model: one flipped image is 1.6 points
    assert export_main(argv) == 0
    out = root / "logs" / EXPERIMENT / "version_0" / "export"
    return {"root": root, "ckpt": ckpt_dir / "last.ckpt", "out": out}


def test_checkpoint_holds_masks_and_loads_without_lightning(run_dirs):
    state = torch.load(run_dirs["ckpt"], weights_only=False)["state_dict"]
    assert "model.features.0.weight_mask" in state and "model.features.0.weight" not in state
    ck = load_checkpoint_model(run_dirs["ckpt"])
    assert ck.structure == "masked" and ck.task is None and ck.method is None  # masks, but no pruning record
    assert ck.masked_layers == list(prunable_modules(ck.model))
    # The same network as Lightning's own loader (on_load_checkpoint re-creates the masks).
    lit = ImageClassifier.load_from_checkpoint(run_dirs["ckpt"]).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(ck.model(x), lit(x))


def test_cli_writes_every_file_and_handoff_json(run_dirs):
    out = run_dirs["out"]
    names = {p.name for p in out.iterdir()}
    assert {f"{VARIANT}{s}" for s in (".json", ".pt", ".onnx", ".int8.pt")} <= names
    assert {"handoff.json", "handoff.md"} <= names
    doc = json.loads((out / "handoff.json").read_text())
    (entry,) = doc["variants"]
    assert entry["variant"] == VARIANT and entry["structure"] == "masked"
    assert entry["eval_images"] == 64 and entry["batch_size"] == 32
    assert entry["sparsity"] == pytest.approx(SPARSITY, abs=0.01)
    for key in ("float_top1", "int8_top1", "onnx_top1"):
        assert 0 <= entry[key] <= 100
    assert entry["onnx_top1"] == entry["float_top1"]
    assert entry["onnx_latency_ms"] > 0 and entry["int8_latency_ms"] > 0
    assert entry["onnx_size_mb"] == pytest.approx((out / f"{VARIANT}.onnx").stat().st_size / 1e6)
    # int8 weights: about a quarter of the float file (scales, BN folded, pickling overhead on top)
    assert entry["int8_size_mb"] < 0.6 * entry["float_size_mb"]
    onnx_match = entry["outputs_match"]["onnx"]
    assert onnx_match["match"] is True and onnx_match["max_abs_diff"] <= 1e-4 and onnx_match["same_top1"]
    assert entry["outputs_match"]["state_dict"]["max_abs_diff"] == 0.0
    assert entry["int8"]["calibration_images"] == 64 and entry["int8"]["backend"] in ("x86", "fbgemm", "qnnpack")
    assert entry["int8"]["zeros_preserved"] and entry["int8"]["int8_zeros"] >= entry["int8"]["float_zeros"] > 0
    arch = read_sidecar(out / f"{VARIANT}.json")["architecture"]
    assert entry["macs"] == count_macs(vgg16_bn(arch["num_classes"], arch["channels"], False, arch["classifier_width"]))
    sidecar = read_sidecar(out / f"{VARIANT}.onnx")
    assert sidecar["metadata"]["source_checkpoint"] == str(run_dirs["ckpt"])
    assert sidecar["metadata"]["accuracy"]["float_top1"] == entry["float_top1"]
    assert sidecar["metadata"]["dataset"] == "digits" and len(sidecar["metadata"]["preprocessing"]["mean"]) == 3


def test_masks_are_folded_to_exact_zeros(run_dirs):
    raw = torch.load(run_dirs["ckpt"], weights_only=False)["state_dict"]
    plain = torch.load(run_dirs["out"] / f"{VARIANT}.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in plain)
    for name in prunable_modules(VGG(10, [4] * 13, 4)):
        mask = raw[f"model.{name}.weight_mask"].bool()
        weight = plain[f"{name}.weight"]
        assert (~mask).sum() > 0
        assert torch.all(weight[~mask] == 0)
        assert torch.equal(weight[mask], raw[f"model.{name}.weight_orig"][mask])


def test_onnx_runtime_matches_pytorch_on_real_images(run_dirs, digits):
    import onnxruntime as ort

    ck = load_checkpoint_model(run_dirs["ckpt"])
    session = ort.InferenceSession(str(run_dirs["out"] / f"{VARIANT}.onnx"), providers=["CPUExecutionProvider"])
    x, _ = next(iter(digits.test_dataloader()))
    for batch in (x, x[:7]):  # the batch axis is dynamic
        logits = torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
        with torch.no_grad():
            expected = ck.model(batch)
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max() <= 1e-4
        assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_int8_file_keeps_zeros_and_widths(run_dirs):
    float_model = load_state_dict_model(run_dirs["out"] / f"{VARIANT}.pt")
    qmodel = load_int8(run_dirs["out"] / f"{VARIANT}.int8.pt")
    weights = int8_weights(qmodel)
    for name, layer in prunable_modules(float_model).items():
        zero = layer.weight == 0
        assert zero.sum() > 0
        assert torch.all(weights[name].int_repr()[zero] == 0), name
        assert torch.all(weights[name].q_per_channel_zero_points() == 0)
    convs = [m for m in qmodel.model.features if hasattr(m, "out_channels")]
    assert [m.out_channels for m in convs] == scaled_channels(TINY_WIDTH)


def test_handoff_table_and_report_section(run_dirs):
    lines = handoff_section(run_dirs["root"] / "logs")
    header = ("| variant | weights | float top-1 | int8 top-1 (PyTorch / ONNX) | size: ONNX / int8 ONNX / compressed | "
              "ONNX Runtime latency (fp32) | ONNX Runtime latency (int8) | latency float / int8 (PyTorch) | "
              "outputs match | int8 gate: drop (PyTorch / ONNX), recipe |")
    assert lines[0].startswith("## ") and header in lines
    entry = json.loads((run_dirs["out"] / "handoff.json").read_text())["variants"][0]
    row = next(line for line in lines if line.startswith(f"| {VARIANT} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "masked" and cells[2] == f"{entry['float_top1']:.2f}"
    assert cells[3] == f"{entry['int8_top1']:.2f} / {entry['int8_onnx_top1']:.2f}"
    sizes = " / ".join(f"{entry[k]:.3f}" for k in ("onnx_size_mb", "int8_onnx_size_mb", "compressed_mb"))
    assert cells[4] == f"{sizes} MB" and entry["compressed_mb"] < entry["int8_onnx_size_mb"] < entry["onnx_size_mb"]
    assert cells[5].endswith("ms (bs 32)") and cells[6].endswith("ms (bs 32)") and cells[8].startswith("yes (ONNX")
    assert cells[7] == f"{entry['float_latency_ms']:.1f} / {entry['int8_latency_ms']:.1f} ms"
    drops = " / ".join(f"{entry['int8_gate']['forms'][f]['drop']:.2f}" for f in ("int8", "int8_onnx"))
    assert cells[9] == f"passed: {drops} (max 100), CLE + minmax"
    assert handoff_section(run_dirs["root"] / "checkpoints") == []
    assert handoff_table([{"variant": "v", "outputs_match": {"onnx": {"match": False, "max_abs_diff": 0.5}}}]) \
        .endswith("| v | — | — | — / — | — / — / — MB | — | — | — | **no** (ONNX, max diff 5.0e-01) | — |")


def _lightning_like_checkpoint(module: ImageClassifier, path: Path) -> Path:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    return path


def test_channel_pruned_model_rebuilds_from_the_sidecar_alone(tmp_path):
    narrow = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    module = ImageClassifier(10, narrow, width_multiplier=TINY_WIDTH, classifier_width=TINY_CLASSIFIER).eval()
    ckpt = _lightning_like_checkpoint(module, tmp_path / "narrow.ckpt")
    x = torch.randn(6, 3, 32, 32)
    result = export_checkpoint(ckpt, tmp_path / "out", ["state_dict"], x, variant="narrow")
    doc = json.loads((tmp_path / "out" / "narrow.json").read_text())
    assert doc["architecture"]["channels"] == narrow and doc["architecture"]["classifier_width"] == TINY_CLASSIFIER
    assert doc["metadata"]["structure"] == "narrow" and result.matches["state_dict"]["max_abs_diff"] == 0.0
    arch = doc["architecture"]  # nothing from training: only the sidecar's three numbers
    rebuilt = vgg16_bn(arch["num_classes"], arch["channels"], classifier_width=arch["classifier_width"])
    rebuilt.load_state_dict(torch.load(tmp_path / "out" / "narrow.pt", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), module(x))
    assert [c.out_channels for _, c, _ in rebuilt.conv_layers()] == narrow


def test_dense_export_reloads_bit_for_bit(tmp_path, tiny_model):
    module = ImageClassifier(10, scaled_channels(TINY_WIDTH), classifier_width=TINY_CLASSIFIER)
    module.model = tiny_model
    ckpt = _lightning_like_checkpoint(module, tmp_path / "dense.ckpt")
    x = torch.randn(4, 3, 32, 32)
    export_checkpoint(ckpt, tmp_path, ["state_dict"], x, variant="dense")
    reloaded = load_state_dict_model(tmp_path / "dense.json")
    assert reloaded.state_dict().keys() == tiny_model.state_dict().keys()
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    meta = read_sidecar(tmp_path / "dense.pt")["metadata"]
    assert meta["structure"] == "dense" and meta["method"] == "none" and meta["task"] == "baseline"
    assert meta["sparsity"] == 0.0
    assert meta["source_checkpoint"] == str(ckpt)


def test_a_mismatching_artifact_is_an_error(tmp_path, tiny_model, monkeypatch):
    def perturbed(path):
        model = load_state_dict_model(path)
        with torch.no_grad():
            model.classifier[6].bias.add_(1e-3)
        return model

    monkeypatch.setattr(pipeline, "load_state_dict_model", perturbed)
    with pytest.raises(ExportError) as err:
        export_model(tiny_model.eval(), tmp_path, "bad", ["state_dict"], torch.randn(4, 3, 32, 32))
    message = str(err.value)
    assert "\n" not in message and "state_dict" in message and "0.0001" in message


def _easy_problem(model: VGG) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy copies of ten random templates, and a classifier head fitted on the frozen features.

    An easy batch with real labels that the float model gets (nearly) all right, in a second.
    Returns calibration images, test images and test labels.
    """
    g = torch.Generator().manual_seed(3)
    templates = torch.randn(10, 3, 32, 32, generator=g)
    labels = torch.arange(10).repeat(16)
    images = templates[labels] + 0.15 * torch.randn(len(labels), 3, 32, 32, generator=g)
    fit_head(model, images, labels)  # BN statistics of these images, so fusion folds real ones
    model.eval()
    test = torch.arange(len(labels)) >= 100
    return images[:60], images[test], labels[test]


def test_int8_accuracy_close_to_float_on_an_easy_batch(tiny_model):
    calibration, x, y = _easy_problem(tiny_model)
    qmodel = quantize_int8(tiny_model, [calibration])
    with torch.no_grad():
        float_top1 = (tiny_model(x).argmax(1) == y).float().mean().item() * 100
        int8_top1 = (qmodel(x).argmax(1) == y).float().mean().item() * 100
    assert float_top1 >= 90
    assert abs(float_top1 - int8_top1) <= 5


def test_int8_keeps_zeros_of_a_pruned_narrow_model_and_the_check_can_fail():
    narrow = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    model = VGG(10, narrow, TINY_CLASSIFIER).eval()
    apply_magnitude_pruning(model, dict.fromkeys(prunable_modules(model), 0.7))
    plain = fold_masks(model)
    qmodel = quantize_int8(plain, [torch.randn(32, 3, 32, 32)])
    check = check_int8(plain, qmodel)
    assert check.zeros_preserved and check.zero_points_zero and check.widths_kept
    assert check.float_zeros == sum(round(0.7 * m.weight.numel()) for m in prunable_modules(plain).values())
    assert check.int8_sparsity >= 0.7
    assert [m.out_channels for m in qmodel.model.features if hasattr(m, "out_channels")] == narrow
    # A float model with zeros where the int8 one has none fails the check.
    other = fold_masks(plain)
    with torch.no_grad():
        w = other.features[0].weight
        w[w != 0] = 0.0
    w_int = int8_weights(qmodel)["features.0"].int_repr()
    assert (w_int != 0).any()
    assert not check_int8(other, qmodel).zeros_preserved


def _cli_error(argv: list[str], capsys) -> str:
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_unknown_run_reference(tmp_path, capsys):
    (tmp_path / "logs" / "digits_baseline").mkdir(parents=True)
    err = _cli_error(["--run", "run:nope", "--logs", str(tmp_path / "logs")], capsys)
    assert "--run" in err and "nope" in err


def test_cli_missing_and_unreadable_checkpoint(tmp_path, capsys):
    err = _cli_error(["--run", str(tmp_path / "missing.ckpt")], capsys)
    assert err.strip() == f"error: --run: no such file {tmp_path / 'missing.ckpt'}"
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    err = _cli_error(["--run", str(garbage)], capsys)
    assert "--run" in err and "garbage.ckpt" in err and "not a readable checkpoint" in err


def test_cli_unsupported_format(tmp_path, capsys):
    err = _cli_error(["--run", str(tmp_path / "x.ckpt"), "--format", "tflite"], capsys)
    assert "--format" in err and "tflite" in err and "state_dict, onnx" in err
    err = _cli_error(["--format", "onnx"], capsys)  # --run is required
    assert "--run" in err
