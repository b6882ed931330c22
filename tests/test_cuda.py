"""The CUDA-only code paths, on tiny models; every test skips where ``torch.cuda.is_available()`` is False.

What only runs on a GPU: synchronisation around timed passes (``profiling.runtime._sync``), CUDA
memory from the profiler's device events and device time in the operator table, the NVML energy
domain, COO layers and their export on a CUDA model, channel pruning with activations on the GPU
(Gram products and least squares there, LASSO on the CPU), GraSP / SNIP scores and the
sensitivity sweep on CUDA tensors, training steps on the GPU, and the bench's CUDA peak memory.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lightning_prune.models import VGG
from lightning_prune.profiling import ProfileSettings, profile_model
from lightning_prune.profiling.energy import measure_energy
from lightning_prune.profiling.runtime import SPARSE_MARKERS, measure_latency, measure_memory, top_operators
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import apply_magnitude_pruning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu_model(tiny_model) -> VGG:
    return tiny_model.to(CUDA).eval()


@pytest.fixture
def gpu_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(8, 3, 32, 32, generator=g).to(CUDA) for _ in range(3)]


def _resident_mb(model: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6


# --- latency, memory, operators ---------------------------------------------------------------------


def test_latency_synchronises_around_every_timed_pass(gpu_model, gpu_batches, monkeypatch):
    calls = []
    synchronize = torch.cuda.synchronize

    def spy(device=None):
        calls.append(device)
        synchronize(device)

    monkeypatch.setattr(torch.cuda, "synchronize", spy)
    mean, std = measure_latency(gpu_model, gpu_batches, warmup=2)
    assert mean > 0 and std >= 0
    # once after the warm-up, then once after each timed pass, always on the batches' device
    assert len(calls) == 1 + len(gpu_batches)
    assert all(torch.device(d) == CUDA for d in calls)


def test_memory_is_cuda_memory(gpu_model, gpu_batches):
    peak, avg = measure_memory(gpu_model, gpu_batches[0])
    resident = _resident_mb(gpu_model)
    assert peak >= avg >= resident > 0
    # one pass allocates at least the first conv's output (8 x c x 32 x 32 floats) on the GPU
    first = gpu_model.features[0].out_channels * 8 * 32 * 32 * 4 / 1e6
    assert peak - resident >= first * 0.99
    # a CPU model's figure is counted from CPU events instead: the two must not mix
    cpu_peak, _ = measure_memory(gpu_model.cpu(), gpu_batches[0].cpu())
    assert cpu_peak > 0


def test_profile_on_cuda(gpu_model, gpu_batches):
    p = profile_model(gpu_model, gpu_batches, ProfileSettings(latency_batches=3, warmup_batches=1, energy_batches=3))
    assert p["memory_device"] == "cuda"
    assert p["peak_memory_mb"] >= p["avg_memory_mb"] >= _resident_mb(gpu_model)
    assert p["latency_ms"] > 0 and p["batch_size"] == 8 and p["batches"] == 3
    assert p["operators"] and all("self_device_ms" in op for op in p["operators"])
    assert sum(op["self_device_ms"] for op in p["operators"]) > 0  # device time, not only CPU launch time
    assert set(p["energy_mj"]) == {"cpu", "dram", "gpu"}
    if p["energy_mj"]["gpu"] is None:
        assert p["energy_note"] and "gpu" in p["energy_note"]  # a null always comes with its reason
    else:
        assert p["energy_mj"]["gpu"] >= 0


def test_top_operators_rank_by_device_time(gpu_model, gpu_batches):
    rows = top_operators(gpu_model, gpu_batches[0], count=5)
    assert rows and all({"name", "calls", "self_cpu_ms", "self_device_ms", "share"} <= set(r) for r in rows)
    device_ms = [r["self_device_ms"] for r in rows[:5]]
    assert device_ms == sorted(device_ms, reverse=True)


# --- energy ---------------------------------------------------------------------------------------------


def _nvml_energy_readable() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(0))
        return True
    except Exception:  # noqa: BLE001 - no NVML, or a GPU without the energy counter
        return False


def test_nvml_energy_domain(gpu_model, gpu_batches):
    x = gpu_batches[0]

    def forward():
        gpu_model(x)
        torch.cuda.synchronize(CUDA)

    with torch.inference_mode():
        result, note = measure_energy(forward, 20, device_index=0)
    assert set(result) == {"cpu", "dram", "gpu"}
    null_domains = [d.strip() for part in (note or "").split(";") for d in part.split(":")[0].split(",")]
    if _nvml_energy_readable():
        assert result["gpu"] is not None and result["gpu"] >= 0, note
        assert "gpu" not in null_domains
    else:
        assert result["gpu"] is None and note and "gpu" in note


# --- sparse COO layers ------------------------------------------------------------------------------


def test_sparse_coo_layers_on_cuda(gpu_model, gpu_batches, tmp_path):
    from lightning_prune.artifacts import export_sparse
    from lightning_prune.pruning.sparse import SPARSE_TYPES, load_sparse_model

    apply_magnitude_pruning(gpu_model, dict.fromkeys(prunable_modules(gpu_model), 0.8))
    export = export_sparse(gpu_model, tmp_path)
    assert export.total_mismatches == 0
    sparse_layers = [m for m in export.sparse.modules() if isinstance(m, SPARSE_TYPES)]
    assert len(sparse_layers) == 16
    assert all(m.weight.is_sparse and m.weight.device.type == "cuda" for m in sparse_layers)
    x = gpu_batches[0]
    with torch.no_grad():
        expected = gpu_model.eval()(x)
        for variant in (export.sparse, export.densified, export.permanent):
            out = variant.eval()(x)
            assert out.device.type == "cuda"
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        # the saved file reloads onto a CUDA template
        state = torch.load(export.sparse_path, weights_only=True)
        reloaded = load_sparse_model(export.permanent, state).to(CUDA).eval()
        torch.testing.assert_close(reloaded(x), expected, rtol=1e-4, atol=1e-4)
    p = profile_model(export.sparse, gpu_batches, ProfileSettings(2, 1, 2), macs_model=export.permanent)
    assert p["memory_device"] == "cuda" and p["sparsity"] > 0.75
    assert any(m in op["name"] for op in p["operators"] for m in SPARSE_MARKERS)


# --- pruning algorithms on CUDA tensors -------------------------------------------------------------------


def test_channel_pruning_on_cuda(gpu_model, tiny_channels):
    from lightning_prune.pruning.channel import keep_count, prune_channels

    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(CUDA)
    narrow, reports = prune_channels(gpu_model, images, 0.5, samples=256, positions=4)
    assert {p.device.type for p in narrow.parameters()} == {"cuda"}
    assert narrow.channels == [keep_count(0.5, c) for c in tiny_channels[:-1]] + [tiny_channels[-1]]
    assert len(reports) == 12 and all(r.samples > 0 for r in reports)
    assert all(r.error_reconstructed <= r.error_pruned + 1e-5 for r in reports)
    with torch.no_grad():
        assert narrow.eval()(images).shape == (32, 10)


def test_saliency_and_sweep_on_cuda(gpu_model, gpu_batches):
    from lightning_prune.pruning.saliency import grasp_scores, masks_from_scores, snip_scores
    from lightning_prune.pruning.sensitivity import sensitivity_scan

    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1)).to(CUDA)
    batches = [(x, y) for x in gpu_batches[:2]]
    for scores, remove in ((grasp_scores(gpu_model, batches), "highest"), (snip_scores(gpu_model, batches), "lowest")):
        assert all(s.device.type == "cuda" and torch.isfinite(s).all() for s in scores.values())
        masks = masks_from_scores(scores, 0.5, remove)
        assert all(m.device.type == "cuda" for m in masks.values())
    with torch.no_grad():
        labelled = [(x, gpu_model(x).argmax(1)) for x in gpu_batches]
    curves = sensitivity_scan(gpu_model, labelled, (0.0, 0.5, 0.9))
    assert len(curves) == 16 and all(c[0] == 100.0 for c in curves.values())


# --- training ------------------------------------------------------------------------------------------


def test_train_steps_on_cuda(gpu_model, gpu_batches):
    """Dense and masked SGD steps on the GPU: weights move, pruned weights stay zero."""
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2)).to(CUDA)
    dense_before = gpu_model.features[0].weight.detach().clone()
    for masked in (False, True):
        model = gpu_model.train()
        if masked:
            apply_magnitude_pruning(model, dict.fromkeys(prunable_modules(model), 0.5))
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        for x in gpu_batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss)
    assert not torch.equal(dense_before, gpu_model.features[0].weight_orig.detach())
    for module in prunable_modules(gpu_model).values():
        assert torch.all(module.weight[module.weight_mask == 0] == 0)


def test_lightning_fit_step_on_cuda(tiny_channels, tmp_path):
    import lightning as L

    from lightning_prune.data import ImageDataModule
    from lightning_prune.module import ImageClassifier

    module = ImageClassifier(num_classes=10, channels=tiny_channels, classifier_width=32, lr=0.01)
    before = module.model.features[0].weight.detach().clone()
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=ImageDataModule("digits", batch_size=16, num_workers=0))
    assert trainer.global_step == 2
    assert module.model.features[0].weight.device.type == "cuda"
    assert not torch.equal(before, module.model.features[0].weight.detach().cpu())


def test_results_environment_names_the_gpu():
    from lightning_prune.results import environment

    env = environment(CUDA)
    assert env["device"].startswith("cuda:0 ") and torch.cuda.get_device_name(0) in env["device"]


# --- the bench ------------------------------------------------------------------------------------------


def test_bench_on_cuda(tmp_path):
    from benchmarks.bench import main

    code = main(["--device", "cuda", "--widths", "0.0625", "--data", "digits", "--isolation", "none",
                 "--threads", "1", "--sweep-images", "8", "--slice-images", "8", "--calibration-per-class", "1",
                 "--channel-per-class", "2", "--channel-samples", "64", "--train-steps", "2",
                 "--profile-batches", "2", "--batch-size", "8", "--task0-batch-size", "32",
                 "--task0-train-batches", "1", "--speedup-rounds", "1", "--budget-widths", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "bench-cuda.json").read_text())
    assert code == 0, report["budgets"]
    assert report["machine"]["kind"] == "cuda" and report["machine"]["cuda"]
    steps = report["widths"]["0.0625"]["steps"]
    assert all(s["ok"] for s in steps.values())
    assert all(s["cuda_peak_mb"] > 0 for s in steps.values())
    assert steps["profile_dense"]["extra"]["memory_device"] == "cuda"
    energy = steps["task0_profile"]["extra"]
    assert energy["energy_mj"]["gpu"] is not None or "gpu" in (energy["energy_note"] or "")
