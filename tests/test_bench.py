"""`sprintc bench` on the CPU (tiny model, eager: no compile) and its bad input. Speed itself is not
tested (figures live in docs/PERFORMANCE.md); the figures' consistency is."""
import json

import pytest
import torch

from sprintc.bench import graph_flops, tiny_version
from sprintc.cli import main
from sprintc.compiler import compile_spec
from sprintc.spec import load_spec


def test_bench_cpu_writes_training_and_sampling_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "specs/digits_sprint.yaml", "--device", "cpu", "--modes", "eager", "--steps", "2",
               "--warmup", "0", "--batch", "3", "--parts", "train,sample", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["meta"]["size"] == "tiny" and d["meta"]["device"] == "cpu" and d["meta"]["matmul_peak_tflops"] > 0
    assert d["meta"]["tune"] is False and d["meta"]["multi_kernel"] is False and d["meta"]["kernels"] is True
    assert d["meta"]["dtype"] == "float32" and d["meta"]["master_weights"] is False  # bf16 only
    rows = {r["graph"]: r for r in d["train"]}
    assert set(rows) == {"routed", "dense"}
    for r in rows.values():
        assert r["mode"] == "eager" and r["batch"] == 3 and "error" not in r
        assert r["ms"] > 0 and r["img_s"] == pytest.approx(3 / r["ms"] * 1e3, rel=0.01)
        assert r["tflops"] > 0 and 0 < r["mfu"]
    # routing drops 75% of the middle blocks' tokens: a routed image costs fewer FLOPs than a dense one
    assert rows["routed"]["gflop_per_img"] < rows["dense"]["gflop_per_img"]
    (s,) = d["sample"]
    assert s["cfg_ms"] > 0 and s["pdg_ms"] > 0 and s["pdg_over_cfg"] == pytest.approx(s["pdg_ms"] / s["cfg_ms"], abs=2e-3)
    assert 0.5 < s["flops_pdg_over_cfg"] < 1
    assert d["summary"][0]["batch"] == 3
    out = capsys.readouterr().out
    assert "training step" in out and "compile settings: mode default" in out


def test_bf16_rows_train_with_master_weights_each_its_own(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "specs/sit_xl_sprint.yaml", "--device", "cpu", "--size", "tiny", "--modes", "eager", "--steps",
                 "1", "--warmup", "0", "--batch", "2", "--parts", "train", "--clip", "both", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["meta"]["dtype"] == "bfloat16" and d["meta"]["master_weights"] is True
    assert d["meta"]["moments_dtype"] == "float32"
    assert [r["graph"] for r in d["train"]] == ["routed", "dense"]  # the second row's optimizer took the same model
    assert all("error" not in r and r["ms"] > 0 for r in d["train"])


def test_bench_takes_the_moments_dtype_for_its_master_weights(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "specs/sit_xl_sprint.yaml", "--device", "cpu", "--size", "tiny", "--modes", "eager", "--steps",
            "1", "--warmup", "0", "--batch", "2", "--parts", "train", "--graphs", "routed", "--json", str(out)]
    assert main(args + ["--moments", "bfloat16"]) == 0
    d = json.loads(out.read_text())
    assert d["meta"]["moments_dtype"] == "bfloat16" and all("error" not in r and r["ms"] > 0 for r in d["train"])
    assert main(args + ["--moments", "bfloat16", "--no-master-weights"]) == 0  # no master weights: float32 moments
    assert json.loads(out.read_text())["meta"]["moments_dtype"] == "float32"


def test_the_settings_line_names_regions_only_when_blocks_are_compiled_by_region(capsys):
    args = ["bench", "specs/digits_sprint.yaml", "--device", "cpu", "--modes", "eager", "--steps", "1", "--warmup", "0",
            "--batch", "2", "--parts", "train", "--graphs", "routed", "--region-blocks", "2"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compile settings:"))
    assert "regions of 2 blocks" in line and "whole model" not in line
    assert main(args + ["--no-regional"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compile settings:"))
    assert "whole model" in line and "regions of" not in line


def test_a_spec_without_clipping_benches_rows_labelled_off(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "scripts/xl_like_anchor.yaml", "--device", "cpu", "--size", "tiny", "--modes", "eager", "--steps", "1",
                 "--warmup", "0", "--batch", "2", "--parts", "train", "--clip", "both", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["meta"]["grad_clip"] == 0
    assert [(r["graph"], r["clip"]) for r in d["train"]] == [("routed", "off"), ("dense", "off")]
    assert all("error" not in r and r["ms"] > 0 for r in d["train"])


def test_graph_flops_count_the_routed_and_guidance_graphs():
    built = compile_spec(tiny_version(load_spec("sit_xl_sprint")))
    dense, routed = graph_flops(built, 2, routed=False), graph_flops(built, 2, routed=True)
    pdg, cfg = graph_flops(built, 2, routed=False, guidance=True), graph_flops(built, 4, routed=False)
    assert routed < dense and pdg < cfg
    assert graph_flops(built, 4, routed=False) == pytest.approx(2 * dense, rel=1e-6)  # linear in the batch


def test_tiny_version_keeps_the_passes():
    spec = load_spec("sit_xl_sprint")
    tiny = tiny_version(spec)
    assert [p.name for p in tiny.passes] == [p.name for p in spec.passes]
    assert tiny.model.width == 64 and tiny.model.depth == 4 and tiny.target.dtype == spec.target.dtype


@pytest.mark.parametrize("args, message", [
    (["--modes", "warp"], "--modes: unknown 'warp'"),
    (["--parts", "train,fly"], "--parts: unknown 'fly'"),
    (["--batch", "0"], "--batch: each value must be >= 1"),
    (["--batch", "two"], "--batch: expected comma-separated integers"),
    (["--mode", "fast"], "--mode: unknown mode 'fast'"),
    (["--steps", "0"], "--steps: 0 must be >= 1"),
    (["--inductor-config", "no_such_knob=1"], "no setting 'no_such_knob'"),
    (["--device", "tpu"], "device: 'tpu'"),
    (["--region-blocks", "0"], "region_blocks"),
])
def test_bad_input_exits_2_with_a_message(args, message, capsys):
    assert main(["bench", "specs/digits_sprint.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_exits_2(capsys):
    assert main(["bench", "specs/digits_sprint.yaml", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert ("no CUDA GPU" in err or "without CUDA" in err) and "Traceback" not in err


def test_unknown_spec_exits_2(capsys):
    assert main(["bench", "specs/no_such_spec.yaml", "--device", "cpu"]) == 2


class SubprocException(Exception):  # as Inductor's compile workers report a failure: a traceback after one line
    pass


def inductor_worker_failure():
    worker = SubprocException("An exception occurred in a subprocess:\n\nName=triton\nTraceback (most recent call "
                              "last):\n  File \"compiler.py\", line 80, in make_ir\n"
                              "AssertionError: the loop redefines acc as fp64\n")
    try:
        raise worker
    except SubprocException as cause:
        raise RuntimeError("SubprocException: An exception occurred in a subprocess:") from cause


def wrapped_failure():  # a compiler failure that wraps its cause, as Dynamo's BackendCompilerFailed does
    try:
        raise RuntimeError("block size too large")
    except RuntimeError as cause:
        raise ValueError("backend='inductor' raised:\n\nmore text") from cause


@pytest.mark.parametrize("failure, why", [
    (wrapped_failure, "ValueError: backend='inductor' raised: <- RuntimeError: block size too large"),
    (inductor_worker_failure, "RuntimeError: SubprocException: An exception occurred in a subprocess: "
                              "<- SubprocException: AssertionError: the loop redefines acc as fp64")])
def test_a_failing_row_says_why_and_the_other_rows_stay(tmp_path, monkeypatch, failure, why):
    import sprintc.bench as bench

    real = bench._loss_fn

    def dense_fails(model, *batch):
        if not getattr(model.sprint, "routing", True):
            failure()
        return real(model, *batch)

    monkeypatch.setattr(bench, "_loss_fn", dense_fails)
    out = tmp_path / "bench.json"
    assert main(["bench", "specs/digits_sprint.yaml", "--device", "cpu", "--modes", "eager", "--steps", "1",
                 "--warmup", "0", "--batch", "2", "--parts", "train", "--multi-kernel", "--no-kernels",
                 "--no-regional", "--mix-order-reduction", "--no-pdl", "--no-master-weights", "--region-blocks", "3",
                 "--no-batch-modulation", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["meta"]["multi_kernel"] is True and d["meta"]["kernels"] is False
    assert d["meta"]["regional"] is False and d["meta"]["mix_order_reduction"] is True
    assert d["meta"]["master_weights"] is False and d["meta"]["pdl"] is False and d["meta"]["region_blocks"] == 3
    assert d["meta"]["batch_modulation"] is False
    rows = {r["graph"]: r for r in d["train"]}
    assert rows["routed"]["ms"] > 0 and "error" not in rows["routed"]
    assert rows["dense"]["error"] == why
