"""`sprintc build`, `validate`, `schema` and `convert` through the CLI entry point."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import CONFORMANCE, tiny_spec
from sprintc import cli
from sprintc.compiler import compile_spec
from sprintc.reference import spec_from_config
from sprintc.spec import load_spec


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()))
    return path


def test_build_writes_lock_graph_dot_and_report(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["build", str(tiny_yaml), "--out", str(out), "--dump-after", "pdg"]) == 0
    text = capsys.readouterr().out
    assert "stages: training forward, per image (routed)" in text and "middle->decoder" in text
    assert "def forward_guidance(self, x, t, y = None" in text.split("guidance graph (pdg)")[1]
    # the lock file is the fully resolved spec: it loads back to the same spec
    assert load_spec(out / "spec.lock.yaml") == load_spec(tiny_yaml).model_copy(update={"extends": None})
    # graph.py is valid Python with the routed forward and the guidance graph
    src = (out / "graph.py").read_text()
    ns = {}
    exec(compile(src, "graph.py", "exec"), ns)
    assert callable(ns["forward"]) and callable(ns["forward_guidance"])
    assert "sprintc_routing_gather_tokens(" in src and "sprintc_routing_first_half(" in src
    assert (out / "graph.dot").read_text().startswith("digraph G {")
    rep = json.loads((out / "report.json").read_text())
    stages = {r["stage"]: r for r in rep["stages"]}
    assert list(stages) == ["embed", "encoder", "encoder->middle", "middle", "middle->decoder", "decoder", "head"]
    assert [stages[s]["blocks"] for s in ("encoder", "middle", "decoder")] == [1, 2, 1]
    assert stages["middle"]["tokens"] == 4 and stages["decoder"]["tokens"] == 16
    # every parameter of the model is in exactly one stage
    model = compile_spec(tiny_yaml, device="meta").model
    assert rep["total"]["params"] == rep["params"] == sum(p.numel() for p in model.parameters())
    assert all(r["train_gflops"] == pytest.approx(3 * r["forward_gflops"]) for r in rep["stages"])
    assert [p["applied"] for p in rep["passes"]] == [True] * 5
    tr, sa = rep["training"], rep["sampling"]
    assert tr["routed_gflops"] < tr["dense_gflops"] and tr["ratio"] == pytest.approx(tr["routed_gflops"] / tr["dense_gflops"])
    assert sa["pdg_gflops"] < sa["cfg_gflops"] and sa["ideal_speedup"] == pytest.approx(1 / sa["ratio"])
    assert rep["route"] == {"sampler": "structured", "tokens": 16, "kept": 4, "group": [2, 2], "per_group": 1}


def test_build_dense_spec_lists_no_passes(tmp_path, capsys):
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(passes=[], name="dense")))
    assert cli.main(["build", str(path), "--out", str(tmp_path / "o"), "--target", "eager"]) == 0
    text = capsys.readouterr().out
    assert "passes: none (the dense model)" in text and "1x (no routing)" in text
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["stage"] for r in rep["stages"]] == ["embed", "blocks", "head"]
    assert rep["training"]["ratio"] == 1 and rep["sampling"]["pdg_gflops"] is None and rep["route"] is None
    assert yaml.safe_load((tmp_path / "o" / "spec.lock.yaml").read_text())["target"]["name"] == "eager"


def test_build_default_out_dir(tmp_path, monkeypatch, capsys):
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(passes=[], name="dense")))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["build", str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "dense" / "build").iterdir()) == \
        ["graph.dot", "graph.py", "report.json", "spec.lock.yaml"]


def test_dump_after(tiny_yaml, tmp_path, capsys):
    assert cli.main(["build", str(tiny_yaml), "--out", str(tmp_path), "--dump-after", "route"]) == 0
    code = capsys.readouterr().out.split("graph after route")[1]
    assert "def forward(self, x, t, y = None, ids_keep = None):" in code  # path_drop comes later
    assert "scatter_tokens" in code and "sprint.fuse" not in code
    assert cli.main(["build", str(tiny_yaml), "--out", str(tmp_path), "--dump-after", "rout"]) == 2
    assert capsys.readouterr().err == ("sprintc build: error: --dump-after rout: no such pass ran; "
                                       "ran: trace, partition, route, path_drop, fuse, pdg\n")


def test_build_errors_exit_2(tmp_path, capsys):
    assert cli.main(["build", "tests/specs_bad/nope.yaml"]) == 2
    assert "no such spec file" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["build", "digits", "--out", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.startswith(f"sprintc build: error: --out {blocker / 'sub'}: cannot write")


@pytest.mark.parametrize("argv", [["build", "digits", "--target", "cuda"], ["sample", "digits", "--ckpt", "x", "--target", "cuda:0"]])
def test_a_device_given_as_the_target_says_where_the_device_goes(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "is a device, not a target (targets: eager, inductor, aot)" in err and "--device" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_build_sit_xl_sprint_ratios(tmp_path):
    """The reference SPRINT config: 2/24/2 blocks at 75% drop trains at ~0.36x the FLOPs; PDG samples at
    ~0.57x of CFG (the paper's figures)."""
    assert cli.main(["build", "sit_xl_sprint", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["training"]["ratio"] == pytest.approx(0.36, abs=0.01)
    assert rep["sampling"]["ratio"] == pytest.approx(0.57, abs=0.01)
    assert rep["training"]["dense_gflops"] / 3 == pytest.approx(2 * 118.6 * 1.0063, rel=0.01)  # + the fusion linear
    # path drop 0.1 at the pretraining batch of 256: 25 samples skip the 24 middle blocks
    pd = rep["path_drop"]
    assert (pd["batch"], pd["skipped"]) == (256, 25)
    middle = next(r for r in rep["stages"] if r["stage"] == "middle")["train_gflops"]
    assert pd["train_gflops"] == pytest.approx(rep["training"]["routed_gflops"] - 25 / 256 * middle, rel=1e-3)


def test_validate_prints_resolved_yaml(capsys):
    assert cli.main(["validate", "dit_b"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["name"] == "dit_b" and out["model"]["width"] == 768 and out["model"]["patch"] == 2  # merged from dit_xl
    assert "extends" not in out and out["train"]["ema"]["decay"] == 0.9999  # defaults filled


def test_schema(tmp_path, capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "sprintc spec" and "model" in schema["properties"]
    assert cli.main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == schema


# ------------------------------------------------------------------------------------------ convert
@pytest.fixture
def ref_spec(tmp_path):
    config = json.loads((CONFORMANCE / "sprint_official_tiny.json").read_text())["config"]
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(spec_from_config(config)))
    return path


REF = CONFORMANCE / "sprint_official_tiny.weights.safetensors"


def test_convert_reference_checkpoint(ref_spec, tmp_path, capsys):
    out = tmp_path / "conv" / "sprintc.safetensors"
    assert cli.main(["convert", str(REF), "--spec", str(ref_spec), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}:")
    ref, got = load_file(str(REF)), load_file(str(out))
    assert set(got) == set(compile_spec(ref_spec, device="meta").model.state_dict())
    enc = 1  # encoder_depth of the fixture: middle block j is sprintc block 1 + j
    assert torch.equal(got["blocks.0.attn.qkv.weight"], ref["encoder_blocks.0.attn.qkv.weight"])
    assert torch.equal(got[f"blocks.{enc + 1}.mlp.fc2.bias"], ref["middle_blocks.1.mlp.fc2.bias"])
    assert torch.equal(got["sprint.fuse.linear.weight"], ref["renoise_linear.weight"])
    assert torch.equal(got["sprint.mask_token"], ref["mask_token"])
    assert sum(v.numel() for v in got.values()) == sum(v.numel() for v in ref.values())


def test_convert_mismatch_lists_every_key_and_keeps_out(ref_spec, tmp_path, capsys):
    ref = load_file(str(REF))
    ref.pop("mask_token")
    ref.pop("middle_blocks.0.attn.proj.bias")
    ref["extra.weight"] = torch.zeros(2)
    ref["x_embedder.proj.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(ref, str(bad))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    assert cli.main(["convert", str(bad), "--spec", str(ref_spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing keys (2): blocks.1.attn.proj.bias, sprint.mask_token" in err
    assert "unexpected keys (1): extra.weight" in err
    assert "mis-shaped keys (1): x_embedder.proj.weight: checkpoint (3, 3) vs model (64, 16)" in err
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "out.safetensors", "ref.yaml"]


def test_convert_bad_paths(ref_spec, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    assert cli.main(["convert", str(tmp_path / "none.safetensors"), "--spec", str(ref_spec), "--out", str(out)]) == 2
    assert "reference checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    assert cli.main(["convert", str(junk), "--spec", str(ref_spec), "--out", str(out)]) == 2
    assert "cannot read the checkpoint" in capsys.readouterr().err
    assert cli.main(["convert", str(REF), "--spec", str(ref_spec), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not out.exists()
