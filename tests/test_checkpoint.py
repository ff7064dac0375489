import errno
import json

import pytest
import torch

from conftest import tiny_spec
from sprintc import checkpoint as ckpt
from sprintc.compiler import build
from sprintc.errors import CheckpointError
from sprintc.spec import dump_spec, load_spec


def write(root, step, keep=3, sd=None, spec=None):
    sd = sd if sd is not None else {"w": torch.full((2, 3), float(step)), "b": torch.arange(3.0)}
    state = {"step": step, "cursor": 8 * step, "optimizer": {"state": {}, "param_groups": []},
             "rng": {"torch": torch.get_rng_state()}}
    text = dump_spec(load_spec(spec or tiny_spec()))
    return ckpt.save(root, step, model=sd, ema={k: v + 1 for k, v in sd.items()}, state=state, spec_text=text, keep=keep)


def test_roundtrip_and_layout(tmp_path):
    p = write(tmp_path, 5)
    assert p == tmp_path / "step_000005"
    assert sorted(f.name for f in p.iterdir()) == ["ema.safetensors", "manifest.json", "model.safetensors", "spec.lock.yaml", "state.pt"]
    c = ckpt.load(p)
    assert c.step == 5 and torch.equal(c.model["w"], torch.full((2, 3), 5.0)) and torch.equal(c.ema["b"], torch.arange(3.0) + 1)
    assert c.state["cursor"] == 40 and torch.equal(c.state["rng"]["torch"], torch.get_rng_state())
    assert c.spec.name == "tiny" and c.spec.model.width == 64
    only = ckpt.load(tmp_path, parts=("ema",))  # a run folder resolves to its newest checkpoint
    assert only.model is None and only.state is None and only.ema is not None


def test_keeps_the_last_n_and_never_overwrites(tmp_path):
    for s in (1, 2, 3, 4):
        write(tmp_path, s, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    before = (tmp_path / "step_000004" / "model.safetensors").read_bytes()
    write(tmp_path, 4, keep=2, sd={"w": torch.zeros(1)})  # same step again: the existing one stays
    assert (tmp_path / "step_000004" / "model.safetensors").read_bytes() == before
    assert ckpt.resolve(tmp_path).name == "step_000004"
    assert ckpt.resolve(tmp_path / "last").name == "step_000004"


def test_full_disk_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    write(tmp_path, 1)
    real = ckpt._write_bytes
    calls = []

    def full_disk(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # the second file: half of it reaches the disk, then the disk is full
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes", full_disk)
    with pytest.raises(CheckpointError, match=r"step_000002: cannot write the checkpoint \(the disk is full\).*intact"):
        write(tmp_path, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000001"]  # no step_000002, no .tmp-*
    assert ckpt.load(tmp_path).step == 1


@pytest.mark.parametrize("damage,match", [
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-7]), r"model.safetensors: corrupt"),
    (lambda p: (p / "state.pt").write_bytes(b"x" + (p / "state.pt").read_bytes()[1:]), r"state.pt: corrupt"),
    (lambda p: (p / "manifest.json").unlink(), r"no manifest.json; the checkpoint is incomplete"),
    (lambda p: (p / "manifest.json").write_text("{not json"), r"manifest.json: corrupt"),
    (lambda p: (p / "ema.safetensors").unlink(), r"ema.safetensors: missing"),
])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage, match):
    p = write(tmp_path, 3)
    damage(p)
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(p)


def test_resolve_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.resolve(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ckpt.resolve(tmp_path)


def test_load_for_inference_uses_the_stored_spec_and_ema(tmp_path):
    spec = load_spec(tiny_spec())
    torch.manual_seed(0)
    net = build(spec)
    sd = {k: v + 0.01 * torch.randn_like(v) for k, v in net.state_dict().items()}
    ema = {k: v + 1e-3 for k, v in sd.items()}
    p = ckpt.save(tmp_path, 7, model=sd, ema=ema, state={"step": 7}, spec_text=dump_spec(spec), keep=2)
    m = ckpt.load_for_inference(p)
    assert not m.training and sorted(m.sprint.applied) == ["fuse", "partition", "path_drop", "pdg", "route"]
    assert all(torch.equal(m.state_dict()[k], ema[k]) for k in ema)
    raw = ckpt.load_for_inference(tmp_path, ema=False)
    assert torch.equal(raw.state_dict()["sprint.mask_token"], sd["sprint.mask_token"])
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    assert m(x, t, y).shape == (2, 4, 8, 8)
    with pytest.raises(CheckpointError, match=r"ema.safetensors: does not match the model: \d+ shape mismatch"):
        ckpt.load_for_inference(p, spec=tiny_spec(model__width=32))


def test_spec_differences_name_the_keys():
    a = load_spec(tiny_spec())
    b = load_spec(tiny_spec(model__depth=6))
    assert ckpt.spec_differences(a, a) == []
    assert ckpt.spec_differences(a, b) == ["model.depth: 4 -> 6"]
    c = load_spec(tiny_spec(train={"stages": [{"name": "x", "steps": 9, "batch": 2}]}))
    assert ckpt.spec_differences(a, c) == []  # the recipe may change on resume; the weights' meaning may not


def test_manifest_lists_sizes_and_checksums(tmp_path):
    p = write(tmp_path, 2)
    man = json.loads((p / "manifest.json").read_text())
    assert man["step"] == 2
    for name, entry in man["files"].items():
        assert (p / name).stat().st_size == entry["size"]
