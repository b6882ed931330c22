"""The profiler: each figure against an independent computation, and results.json's contract."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest
import torch
from torchprofile import profile_macs

from lightning_prune import results as R
from lightning_prune.profiling import ProfileSettings, evaluate, profile_model
from lightning_prune.profiling.energy import measure_energy
from lightning_prune.profiling.runtime import measure_memory, top_operators
from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.sparse import to_sparse_model
from lightning_prune.pruning.unstructured import apply_magnitude_pruning

SHARED_SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "results.schema.json"


def test_profile_fields_are_sane(tiny_model):
    batches = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    p = profile_model(tiny_model, batches, ProfileSettings(latency_batches=3, warmup_batches=1, energy_batches=2))
    buffer = io.BytesIO()
    torch.save(tiny_model.state_dict(), buffer)
    assert p["model_size_mb"] == pytest.approx(len(buffer.getvalue()) / 1e6, rel=1e-3)
    assert p["params"] == sum(t.numel() for t in tiny_model.parameters())
    assert p["nonzero_params"] == sum(int(torch.count_nonzero(t)) for t in tiny_model.parameters())
    assert p["macs"] == profile_macs(tiny_model.eval(), torch.zeros(1, 3, 32, 32))
    assert p["latency_ms"] > 0 and p["latency_ms_std"] >= 0
    assert p["batch_size"] == 8 and p["batches"] == 3 and p["memory_device"] == "cpu"
    assert p["peak_memory_mb"] >= p["avg_memory_mb"] > 0
    assert 0 <= p["sparsity"] < 0.01
    assert any("convolution" in op["name"] for op in p["operators"])


def test_operator_list_shows_which_kernels_ran(tiny_model):
    x = torch.randn(4, 3, 32, 32)
    dense = top_operators(tiny_model, x, count=3)
    assert len(dense) == 3 and any("convolution" in op["name"] for op in dense)
    assert [op["self_cpu_ms"] for op in dense] == sorted((op["self_cpu_ms"] for op in dense), reverse=True)
    assert all(0 < op["share"] <= 1 and op["calls"] >= 1 for op in dense)
    assert not any("sparse" in op["name"] or "to_dense" in op["name"] for op in dense)
    apply_magnitude_pruning(tiny_model, {name: 0.8 for name in prunable_modules(tiny_model)})
    ops = {op["name"]: op for op in top_operators(to_sparse_model(tiny_model), x, count=3)}
    # Convolutions densify their COO weight (13 convs), only the 3 linears use a sparse kernel.
    assert ops["aten::to_dense"]["calls"] == 13
    assert sum(op["calls"] for name, op in ops.items() if name == "aten::_sparse_addmm") == 3


def test_memory_grows_with_the_batch(tiny_model):
    small_peak, _ = measure_memory(tiny_model, torch.randn(2, 3, 32, 32))
    big_peak, _ = measure_memory(tiny_model, torch.randn(32, 3, 32, 32))
    # The first conv's output alone is 32*4*32*32 floats = 0.52 MB more than at batch 2.
    assert big_peak - small_peak > 0.4


def test_sparsity_counts_zeroed_weights(tiny_model):
    with torch.no_grad():
        for m in tiny_model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.view(-1)[: m.weight.numel() // 2] = 0
    p = profile_model(tiny_model, [torch.randn(2, 3, 32, 32)], ProfileSettings(1, 0, 1))
    assert p["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_unreadable_energy_is_null_with_a_reason(monkeypatch):
    monkeypatch.setattr("lightning_prune.profiling.energy.RAPL_DIR", "/nonexistent/rapl")
    energy, note = measure_energy(lambda: None, batches=1, device_index=None)
    assert energy == {"cpu": None, "dram": None, "gpu": None}
    assert "no RAPL interface" in note and "gpu: model runs on the CPU" in note


def test_evaluate_top1_top5(tiny_model):
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[5.0, 4, 3, 2, 1, 0]]).repeat(len(x), 1)

    batches = [(torch.zeros(4, 1), torch.tensor([0, 1, 4, 5]))]
    top1, top5 = evaluate(Fixed(), batches, num_classes=6)
    assert (top1, top5) == (25.0, 75.0)


def _entry() -> dict:
    profile = dict.fromkeys(["model_size_mb", "latency_ms", "peak_memory_mb", "avg_memory_mb"], 1.0)
    profile.update(params=10, nonzero_params=5, sparsity=0.5, macs=100, batch_size=2, memory_device="cpu",
                   energy_mj={"cpu": None, "dram": None, "gpu": None}, energy_note="cpu: no RAPL")
    return {"variant": "dense", "accuracy": {"test_top1": 50.0, "test_top5": 90.0}, "profile": profile}


def test_results_are_validated_and_written_whole(tmp_path):
    results = R.new_results("baseline", "digits", "cpu")
    results["models"].append(_entry())
    path = R.save_results(results, tmp_path)
    assert json.loads(path.read_text())["models"][0]["variant"] == "dense"
    assert "| dense |" in path.with_suffix(".md").read_text()
    broken = json.loads(path.read_text())
    broken["models"][0]["accuracy"]["test_top1"] = 150.0
    with pytest.raises(jsonschema.ValidationError):
        R.save_results(broken, tmp_path)
    assert json.loads(path.read_text())["models"][0]["accuracy"]["test_top1"] == 50.0  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp files left


@pytest.mark.skipif(not SHARED_SCHEMA.is_file(), reason="shared schema not beside the checkout")
def test_packaged_schema_is_the_shared_contract():
    assert R.schema() == json.loads(SHARED_SCHEMA.read_text())
