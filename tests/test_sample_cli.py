"""`sprintc sample`: outputs, determinism and bad input, on a tiny 8x8 single-channel SPRINT model."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import sprintc
from sprintc import checkpoint
from sprintc.cli import main
from sprintc.spec import dump_spec
from conftest import tiny_spec


def write_spec(path, **over):
    d = tiny_spec(model__input={"channels": 1, "size": 8}, sample={"sampler": "euler", "steps": 3, "guidance": "pdg", "scale": 2.0}, **over)
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A spec, a random-weight model saved as a plain safetensors file and as a sprintc checkpoint folder."""
    d = tmp_path_factory.mktemp("sample")
    spec_path = write_spec(d / "tiny.yaml")
    spec = sprintc.load_spec(spec_path)
    model = sprintc.build(spec)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.05, generator=g)
    save_file(model.state_dict(), str(d / "w.safetensors"))
    sd = model.state_dict()
    checkpoint.save(d / "run" / "checkpoints", 10, model=sd, ema=sd, state={"step": 10}, spec_text=dump_spec(spec), keep=1)
    return d


def run(*argv):
    return main(["sample", *map(str, argv)])


def test_writes_grid_pngs_and_adm_npz_deterministically(work, capsys):
    a, b = work / "a", work / "b"
    assert run(work / "tiny.yaml", "--ckpt", work / "w.safetensors", "--n", 5, "--batch", 3, "--seed", 1, "--out", a) == 0
    assert run(work / "tiny.yaml", "--ckpt", work / "run", "--n", 5, "--batch", 3, "--seed", 1, "--out", b) == 0
    with np.load(a / "samples_5x8x8x3.npz") as z:
        arr, lab = z["arr_0"], z["arr_1"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 8, 3)
    assert (arr[..., 0] == arr[..., 2]).all()  # the single channel replicated
    assert lab.tolist() == [0, 1, 2, 3, 4]
    assert arr.std() > 0
    pngs = sorted((a / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}_c{i}.png" for i in range(5)]
    assert np.array_equal(np.asarray(Image.open(pngs[3])), arr[3, ..., 0])
    assert Image.open(a / "grid.png").size[0] > 8 * 5
    # the checkpoint folder (EMA weights, same values) gives the same images for the same seed
    with np.load(b / "samples_5x8x8x3.npz") as z:
        assert np.array_equal(z["arr_0"], arr)
    # the README's form: RUN/checkpoints/last is the newest checkpoint
    e = work / "e"
    assert run(work / "tiny.yaml", "--ckpt", work / "run" / "checkpoints" / "last", "--n", 5, "--batch", 3, "--seed", 1, "--out", e) == 0
    with np.load(e / "samples_5x8x8x3.npz") as z:
        assert np.array_equal(z["arr_0"], arr)
    rec = json.loads((a / "sample.json").read_text())
    assert rec["guidance"] == "pdg" and rec["model_rows"] == {"forward": 0, "guidance": 30}
    assert rec["target"]["name"] == "eager" and rec["cuda_graphs"] is False
    # another seed, other images; --classes and --guidance none
    c = work / "c"
    assert run(work / "tiny.yaml", "--ckpt", work / "w.safetensors", "--n", 4, "--seed", 2, "--classes", "7,3",
               "--guidance", "none", "--out", c) == 0
    with np.load(c / "samples_4x8x8x3.npz") as z:
        assert z["arr_1"].tolist() == [7, 3, 7, 3]
        assert not np.array_equal(z["arr_0"], arr[:4])
    assert "sampled 4 images" in capsys.readouterr().out
    # through another compute dtype (bfloat16 autocast): close to, not equal to, float32
    d = work / "d"
    assert run(work / "tiny.yaml", "--ckpt", work / "w.safetensors", "--n", 5, "--batch", 3, "--seed", 1,
               "--dtype", "bfloat16", "--out", d) == 0
    assert json.loads((d / "sample.json").read_text())["target"]["dtype"] == "bfloat16"
    with np.load(d / "samples_5x8x8x3.npz") as z:
        assert np.abs(z["arr_0"].astype(int) - arr.astype(int)).mean() < 8


def test_bad_input_exits_2_with_clear_messages(work, tmp_path, capsys):
    spec, w = work / "tiny.yaml", work / "w.safetensors"
    cases = [
        (["--classes", "3,12"], "class index 12 is out of range; the model has classes 0..9"),
        (["--classes", "a,b"], "--classes 'a,b'"),
        (["--interval", "0.9,0.1"], "interval"),
        (["--steps", "1", "--sampler", "sde"], "too few"),
        (["--sampler", "ddim"], "flow"),
    ]
    for extra, msg in cases:
        assert run(spec, "--ckpt", w, "--out", tmp_path / "x", *extra) == 2
        assert msg in capsys.readouterr().err
    # a checkpoint of another model: the keys and shapes are named
    wide = write_spec(tmp_path / "wide.yaml", model__width=32, model__heads=2)
    assert run(wide, "--ckpt", w, "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "does not match the model" in err and "shape mismatch" in err and "(64" in err
    # PDG on a spec without the pdg pass
    nopdg = tiny_spec(model__input={"channels": 1, "size": 8})
    nopdg["passes"] = [p for p in nopdg["passes"] if p["name"] != "pdg"]
    (tmp_path / "nopdg.yaml").write_text(yaml.safe_dump(nopdg))
    assert run(tmp_path / "nopdg.yaml", "--ckpt", w, "--guidance", "pdg", "--scale", "2", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "no path-drop guidance graph" in err and "pdg" in err
    assert run(spec, "--ckpt", tmp_path / "missing.safetensors", "--out", tmp_path / "x") == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    assert run(spec, "--ckpt", tmp_path / "junk.safetensors", "--out", tmp_path / "x") == 2
    assert "cannot read" in capsys.readouterr().err


def test_warns_when_guiding_a_model_without_label_dropout(work, tmp_path, capsys):
    spec = write_spec(tmp_path / "nodrop.yaml", model__class_dropout=0.0)
    assert run(spec, "--ckpt", work / "w.safetensors", "--n", 1, "--out", tmp_path / "o") == 0
    assert "without label dropout" in capsys.readouterr().err


def test_latent_specs_write_latents_not_pngs(tmp_path, capsys):
    spec_path = tmp_path / "lat.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(sample={"sampler": "euler", "steps": 2, "guidance": "cfg", "scale": 1.5})))
    model = sprintc.build(sprintc.load_spec(spec_path))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert run(spec_path, "--ckpt", tmp_path / "w.safetensors", "--n", 2, "--out", tmp_path / "o") == 0
    assert "not images" in capsys.readouterr().out
    with np.load(tmp_path / "o" / "latents.npz") as z:
        assert z["arr_0"].shape == (2, 4, 8, 8) and z["arr_0"].dtype == np.float32
    assert not (tmp_path / "o" / "grid.png").exists()


def test_cli_error_has_no_traceback(work, tmp_path):
    r = subprocess.run([sys.executable, "-m", "sprintc", "sample", str(work / "tiny.yaml"), "--ckpt",
                        str(tmp_path / "nope"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no such file or folder" in r.stderr
