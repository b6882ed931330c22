"""Bad input, round 4: what a run starts from, what a control may prune, and one line for each refusal."""

from __future__ import annotations

import errno
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_prune.cli import main
from lightning_prune.errors import ConfigError, ExportError
from lightning_prune.export.cli import main as export_main
from lightning_prune.export.onnx_int8 import load_compressed
from lightning_prune.export.publish import staging
from lightning_prune.models import VGG, scaled_channels
from lightning_prune.models.pretrained import check_starting_point
from lightning_prune.pruning.allocation import choose_global, choose_sparsities, choose_uniform, layer_floors
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import layer_sizes, overall_sparsity
from lightning_prune.report.cli import main as report_main
from tests.helpers import TINY_CLASSIFIER, TINY_WIDTH, fake_cifar, run_cli_expecting_error, tiny_cli_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
BASELINE, UNSTRUCTURED, GRASP = (str(CONFIGS / f"{n}.yaml") for n in ("baseline", "unstructured", "grasp"))
QUICK = ["--profile.latency_batches=1", "--profile.energy_batches=1", "--profile.train_batches=1"]
NARROW = [max(1, c // 2) for c in scaled_channels(TINY_WIDTH)]


def _checkpoint(path: Path, channels: list[int], task: str | None = None) -> Path:
    """A Lightning-style checkpoint of a tiny VGG, recorded as pruned by ``task`` (None: never pruned)."""
    state = VGG(10, channels, TINY_CLASSIFIER).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "lineage": [],
                "pruning": {"task": task, "method": "lasso"} if task else None}, path)
    return path


def _error_lines(err: str) -> int:
    """How many ``error:`` lines the CLI printed (a refusal is exactly one, with no traceback of its own)."""
    return sum(line.startswith("error: ") for line in err.splitlines())


def test_a_channel_pruned_checkpoint_never_becomes_a_baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    narrow = _checkpoint(tmp_path / "channel.ckpt", NARROW, "channel")
    argv = ["fit", "--config", BASELINE, *tiny_cli_args(tmp_path), "--trainer.max_epochs=1",
            f"--model.pretrained={narrow}"]
    err = run_cli_expecting_error(argv, capsys)
    assert "pruned by task 'channel'" in err and "builds task 'baseline'" in err and "compound" in err
    assert str(NARROW) in err and _error_lines(err) == 1
    assert not (tmp_path / "logs").exists()


def test_a_dense_checkpoint_of_other_widths_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dense = _checkpoint(tmp_path / "dense.ckpt", NARROW)
    argv = ["fit", "--config", BASELINE, *tiny_cli_args(tmp_path), "--trainer.max_epochs=1",
            f"--model.pretrained={dense}"]
    err = run_cli_expecting_error(argv, capsys)
    assert f"conv widths {NARROW}" in err and f"conv widths {scaled_channels(TINY_WIDTH)}" in err
    assert "model.width_multiplier" in err and _error_lines(err) == 1


@pytest.mark.parametrize("option", ["--model.width_multiplier=0", "--model.lr=-0.1"])
def test_a_non_positive_multiplier_or_learning_rate_is_refused_where_parsed(tmp_path, monkeypatch, capsys, option):
    monkeypatch.chdir(tmp_path)
    err = run_cli_expecting_error(["fit", "--config", BASELINE, *tiny_cli_args(tmp_path), option], capsys)
    assert option.split("=")[0].lstrip("-") in err and _error_lines(err) == 1
    assert not (tmp_path / "logs").exists()


def test_the_compound_config_continues_a_channel_pruned_checkpoint(tmp_path):
    narrow = str(_checkpoint(tmp_path / "channel.ckpt", NARROW, "channel"))
    check_starting_point(narrow, "unstructured", scaled_channels(TINY_WIDTH), TINY_CLASSIFIER)  # its own widths
    with pytest.raises(ConfigError, match="pruned by task 'channel'.*builds task 'grasp'"):
        check_starting_point(narrow, "grasp", scaled_channels(TINY_WIDTH), TINY_CLASSIFIER)
    dense = str(_checkpoint(tmp_path / "dense.ckpt", scaled_channels(TINY_WIDTH)))
    check_starting_point(dense, "unstructured", scaled_channels(TINY_WIDTH), TINY_CLASSIFIER)
    with pytest.raises(ConfigError, match="pruned by task 'channel'.*builds task 'channel'"):
        check_starting_point(narrow, "channel", NARROW, TINY_CLASSIFIER)


def _kept(chosen: dict[str, float], model: VGG) -> dict[str, int]:
    sizes = layer_sizes(model)
    return {name: sizes[name] - round(s * sizes[name]) for name, s in chosen.items()}


def test_no_allocation_empties_a_layer(tiny_model):
    floors = layer_floors(tiny_model)
    assert floors["classifier.6"] == 10 and floors["features.0"] == 4  # one per class; one per channel
    chosen = choose_global(tiny_model, 0.9)  # the N(0, 0.01) linears are the smallest weights of all
    assert all(_kept(chosen, tiny_model)[n] >= floors[n] for n in floors)
    assert overall_sparsity(chosen, layer_sizes(tiny_model)) == pytest.approx(0.9, abs=1e-4)
    levels = [0.0, 0.5, 0.98]
    curves = {n: [80.0, 80.0, 80.0] for n in floors}  # pruning costs nothing anywhere: every layer to the top
    for chosen in (choose_sparsities(tiny_model, target_sparsity=0.97, curves=curves, levels=levels),
                   choose_sparsities(tiny_model, max_drop=1.0, curves=curves, levels=levels)):
        assert all(_kept(chosen, tiny_model)[n] >= floors[n] for n in floors)
    with pytest.raises(ValueError, match=r"target_sparsity=0.97: features.0 .* floor of 4"):
        choose_uniform(tiny_model, 0.97)
    with pytest.raises(ValueError, match=r"sparsities: classifier.6 at sparsity 0.99"):
        choose_sparsities(tiny_model, sparsities={"classifier.6": 0.99})
    with pytest.raises(ValueError, match=r"one threshold reaches at most 0.9"):
        choose_global(tiny_model, 0.999)


def test_a_control_that_would_empty_a_layer_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", UNSTRUCTURED, *tiny_cli_args(tmp_path), "--model.pretrained=false", "--sweep=null",
            "--prune.allocation=uniform", "--prune.target_sparsity=0.97", "--trainer.max_epochs=1"]
    err = run_cli_expecting_error(argv, capsys)
    assert "MagnitudePruning.target_sparsity=0.97: features.0" in err and _error_lines(err) == 1
    assert not list((tmp_path / "logs").glob("*/version_*"))


def test_the_global_control_keeps_every_layer_and_records_the_floors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--config", UNSTRUCTURED, *tiny_cli_args(tmp_path), *QUICK, "--model.pretrained=false",
            "--sweep=null", "--prune.allocation=global", "--trainer.max_epochs=1"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "logs" / "tiny" / "version_0" / "results.json").read_text())
    floors = results["layer_floors"]
    masked = next(m for m in results["models"] if m["variant"] == "pruned-masked")
    for layer in masked["layers"]:
        assert round((1 - layer["sparsity"]) * layer["params"]) >= floors[layer["name"]], layer


def _usage_error(argv: list[str], capsys) -> str:
    """Run the report CLI expecting its one-line refusal (exit 2); return stderr."""
    with pytest.raises(SystemExit) as exit_:
        report_main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    return err


def test_a_page_that_cannot_be_checked_is_one_line(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    docs = tmp_path / "docs"  # a template copied out of docs/: the JSON file it cites is not beside it
    (docs / "src").mkdir(parents=True)
    cited = '{{ json_file("results/timing.json")["wall_seconds"] | fmt(".1f") }}'
    (docs / "src" / "page.md.j2").write_text(f"Took {cited} s.\n")
    (docs / "page.md").write_text("Took 1.0 s.\n")
    out = ["--logs", str(logs), "--out", str(tmp_path / "R.md")]
    for option, folder, named in (("--check-docs", docs, "page.md.j2:1"), ("--render-docs", docs, "page.md.j2:1"),
                                  ("--check-docs", tmp_path / "missing", "missing"),
                                  ("--render-docs", tmp_path / "missing", "missing")):
        err = _usage_error([*out, option, str(folder)], capsys)
        assert f"error: {option}: " in err and named in err, err
    assert (docs / "page.md").read_text() == "Took 1.0 s.\n"  # left as it was


def test_a_broken_onnxruntime_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "deploy"
    assert export_main(["--run", str(tmp_path / "any.ckpt"), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime package is installed but cannot be imported (ImportError: libonnxruntime" in err
    assert _error_lines(err) == 1 and not out.exists()


def test_a_failed_export_leaves_no_empty_out_folder(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "deploy"
    assert export_main(["--run", str(bad), "--format", "state_dict", "--out", str(out)]) == 2
    assert "bad.ckpt" in capsys.readouterr().err and not out.exists()


def test_a_bad_compressed_model_names_its_file(tmp_path):
    good = lzma.compress(b"x" * 1000)
    for name, data in (("truncated.onnx.xz", good[: len(good) // 2]), ("plain.onnx.xz", b"not xz at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ExportError, match=rf"{name}: not a readable \.xz file"):
            load_compressed(tmp_path / name)


def test_the_next_export_removes_what_a_killed_one_left(tmp_path):
    out = tmp_path / "deploy"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = out / f".staging-exp_v0-{dead.pid}-0123abcd"
    running = out / f".staging-exp_v1-{os.getpid()}-4567cdef"  # this process: still exporting
    legacy = out / ".staging-exp_v2-89abcdef"  # named before the process id was part of the name
    for folder in (killed, running, legacy):
        folder.mkdir()
        (folder / "exp.pt").write_bytes(b"partial")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    fresh = staging(out, "exp_v0")
    assert sorted(p.name for p in out.iterdir()) == sorted([running.name, fresh.name])


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("# only a comment\n", "an empty file"),
                                           ("- fit\n- test\n", "a list")])
def test_a_config_that_is_not_a_mapping_names_its_file(tmp_path, monkeypatch, capsys, text, got):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "odd.yaml"
    config.write_text(text)
    err = run_cli_expecting_error(["fit", "--config", str(config), *tiny_cli_args(tmp_path)], capsys)
    assert f"error: --config {config}: must be a YAML mapping" in err and got in err and _error_lines(err) == 1


def test_a_missing_cifar_meta_file_is_not_called_a_failed_download(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake_cifar(tmp_path / "cifar")
    argv = ["fit", "--config", BASELINE, *tiny_cli_args(tmp_path), "--data.dataset=cifar10",
            f"--data.data_dir={tmp_path / 'cifar'}", "--data.download=false", "--data.verify_checksums=false",
            "--data.val_size=8", "--trainer.max_epochs=1"]
    err = run_cli_expecting_error(argv, capsys)
    assert "batches.meta is missing) and data.download is false" in err and _error_lines(err) == 1
    assert "downloading" not in err and "failed" not in err


def _masked_checkpoint(path: Path, channels: list[int], task: str, method: str) -> Path:
    """A checkpoint whose every prunable layer holds a half-zero mask, recorded as pruned by ``task``."""
    model = VGG(10, channels, TINY_CLASSIFIER)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for name, m in prunable_modules(model).items():
        mask = torch.ones_like(m.weight)
        mask.view(-1)[: mask.numel() // 2] = 0
        state[f"model.{name}.weight_mask"] = mask
    torch.save({"state_dict": state, "pruning": {"task": task, "method": method}}, path)
    return path


@pytest.mark.parametrize(("channels", "task", "words"), [
    (scaled_channels(TINY_WIDTH), "unstructured", "pruned by task 'unstructured' (method 'magnitude')"),
    (NARROW, "grasp", "features.0 has shape (2, 3, 3, 3) but this model's has (4, 3, 3, 3)"),
])
def test_the_shuffle_refuses_a_run_it_cannot_copy(tmp_path, monkeypatch, capsys, channels, task, words):
    monkeypatch.chdir(tmp_path)
    source = _masked_checkpoint(tmp_path / "source.ckpt", channels, task, "magnitude" if task != "grasp" else "grasp")
    argv = ["fit", "--config", GRASP, *tiny_cli_args(tmp_path), "--trainer.max_epochs=1", "--prune.method=random",
            "--prune.schedule=oneshot", f"--prune.layerwise_from={source}"]
    err = run_cli_expecting_error(argv, capsys)
    assert "error: StagedPruning.layerwise_from: " in err and words in err and _error_lines(err) == 1, err[-600:]
    assert not list((tmp_path / "logs").glob("*/version_*"))


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # a checkpoint write that runs out of space half-way
        if isinstance(obj, dict) and "state_dict" in obj and "epoch" in obj:
            if hasattr(f, "write"):
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    err = run_cli_expecting_error(["fit", "--config", BASELINE, *tiny_cli_args(tmp_path), "--trainer.max_epochs=1"],
                                  capsys)
    assert "No space left on device" in err and "checkpoint" in err and _error_lines(err) == 1
    folder = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    assert folder.is_dir() and not list(folder.iterdir())  # no truncated .ckpt, no temporary file, no finished.json
