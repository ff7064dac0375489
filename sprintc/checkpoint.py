"""Checkpoints: one folder per step, written atomically, verified on load.

    OUT/checkpoints/step_000500/
        model.safetensors   weights (the training model's state dict, sprint.* included)
        ema.safetensors     EMA weights (same keys)
        state.pt            torch.save dict: step, stage, cursor, optimizer, rng, world_size
        spec.lock.yaml      the fully resolved spec the run trained
        model_ref.txt       only for a user model (--model pkg.module:factory)
        manifest.json       size and crc32 of every file above; written last

A checkpoint is written into `checkpoints/.tmp-step_000500-<pid>/`, each file fsync'ed, then the folder is
renamed into place: a crash or a full disk leaves the earlier checkpoints as they were and no half-written
`step_*` folder. Only the newest `keep` checkpoints are kept.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from sprintc.errors import CheckpointError

STEP_RE = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "ema.safetensors", "state.pt", "spec.lock.yaml")


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict | None
    ema: dict | None
    state: dict | None
    spec_text: str

    @property
    def spec(self):
        from sprintc.spec import load_spec

        try:
            return load_spec(yaml.safe_load(self.spec_text))
        except Exception as e:
            raise CheckpointError(f"{self.path}/spec.lock.yaml: the stored spec does not load: {e}") from None


# ------------------------------------------------------------------------------------------ writing
def _write_bytes(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not fsync directories
    finally:
        os.close(fd)


def _safetensors_bytes(sd: dict, step: int) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in sd.items()}, metadata={"step": str(step), "format": "pt"})


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(root: str | Path, step: int, *, model: dict, ema: dict | None, state: dict, spec_text: str, keep: int,
         model_ref: str | None = None) -> Path:
    """Write checkpoint `root/step_{step:06d}` atomically and keep the newest `keep`. Returns its path.
    A checkpoint already there for this step (a resume that stopped before its first step) is kept as is."""
    root = Path(root)
    final = root / f"step_{step:06d}"
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a run that was killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    files = {"model.safetensors": _safetensors_bytes(model, step), "state.pt": _torch_bytes(state),
             "spec.lock.yaml": spec_text.encode()}
    if ema is not None:
        files["ema.safetensors"] = _safetensors_bytes(ema, step)
    if model_ref:  # a user model (--model pkg.module:factory): inference rebuilds it from here
        files["model_ref.txt"] = model_ref.encode()
    manifest = {"step": step, "files": {n: {"size": len(b), "crc32": zlib.crc32(b)} for n, b in files.items()}}
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_bytes(tmp / name, data)
        _write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"{final}: cannot write the checkpoint ({why}); nothing was written there and the "
                              f"earlier checkpoints in {root} are intact") from None
    prune(root, keep)
    return final


def prune(root: Path, keep: int):
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading
def list_checkpoints(root: str | Path) -> list[Path]:
    """The complete checkpoints (step_* folders) under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def is_newest_alias(p: Path) -> bool:
    """runs/NAME/checkpoints/last (or latest), not itself a file or folder: the newest checkpoint there."""
    return p.name in ("last", "latest") and not p.exists() and p.parent.is_dir()


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its newest checkpoint), a checkpoints/ folder (or
    checkpoints/last), or a step folder."""
    p = Path(path)
    if is_newest_alias(p):
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run folder")
    if (p / "manifest.json").exists() or STEP_RE.match(p.name):
        return p
    for root in (p / "checkpoints", p):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"{p}: holds no checkpoint (expected step_NNNNNN folders in it or in {p / 'checkpoints'})")


def _read_verified(path: Path, name: str, manifest: dict) -> bytes:
    entry = manifest["files"].get(name)
    if entry is None:
        raise CheckpointError(f"{path}: the manifest does not list {name}")
    f = path / name
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    data = f.read_bytes()
    if len(data) != entry["size"] or zlib.crc32(data) != entry["crc32"]:
        raise CheckpointError(f"{f}: corrupt ({len(data)} bytes, checksum mismatch; the manifest says {entry['size']} bytes); "
                              "resume from an earlier checkpoint or remove this one")
    return data


def load(path: str | Path, parts=("model", "ema", "state"), map_location="cpu") -> Checkpoint:
    """Read and verify a checkpoint folder; `parts` picks which of model / ema / state to load."""
    path = resolve(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        step = int(manifest["step"])
        manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no manifest.json; the checkpoint is incomplete or not a sprintc checkpoint") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}/manifest.json: corrupt ({e})") from None
    from safetensors.torch import load as st_load

    out = {}
    for part in ("model", "ema"):
        name = f"{part}.safetensors"
        if part in parts and name in manifest["files"]:
            try:
                out[part] = {k: v.to(map_location) for k, v in st_load(_read_verified(path, name, manifest)).items()}
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(f"{path / name}: cannot read ({e})") from None
    state = None
    if "state" in parts:
        try:
            state = torch.load(io.BytesIO(_read_verified(path, "state.pt", manifest)), map_location=map_location, weights_only=True)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path / 'state.pt'}: cannot read ({e})") from None
    spec_text = _read_verified(path, "spec.lock.yaml", manifest).decode()
    return Checkpoint(path, step, out.get("model"), out.get("ema"), state, spec_text)


def check_state_dict(model: torch.nn.Module, sd: dict, where) -> None:
    """CheckpointError naming the keys and shapes that differ between a model and a state dict."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing, extra = sorted(own.keys() - got.keys()), sorted(got.keys() - own.keys())
    shapes = [f"{k}: checkpoint {got[k]} vs model {own[k]}" for k in sorted(own.keys() & got.keys()) if own[k] != got[k]]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s) (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:3])})")
        raise CheckpointError(f"{where}: does not match the model: {', '.join(parts)}")


def spec_differences(old, new) -> list[str]:
    """Differences in what defines the weights (model and passes) between two specs, as dotted keys."""
    def flat(d, prefix=""):
        if isinstance(d, dict):
            return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
        if isinstance(d, list):
            return {k2: v2 for i, v in enumerate(d) for k2, v2 in flat(v, f"{prefix}{i}.").items()} or {prefix[:-1]: []}
        return {prefix[:-1]: d}

    a = flat({"model": old.model.model_dump(mode="json"), "passes": [p.model_dump(mode="json") for p in old.passes]})
    b = flat({"model": new.model.model_dump(mode="json"), "passes": [p.model_dump(mode="json") for p in new.passes]})
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def load_for_inference(ckpt_path, spec=None, device="cpu", ema: bool = True) -> torch.nn.Module:
    """The model of a checkpoint in eval mode on `device`: EMA weights unless ema=False. `ckpt_path` is a
    step folder, a checkpoints/ folder or a run folder (its newest checkpoint); the spec defaults to the one
    stored in the checkpoint."""
    ck = load(ckpt_path, parts=("ema",) if ema else ("model",))
    if ema and ck.ema is None:
        raise CheckpointError(f"{ck.path}: holds no EMA weights; load it with ema=False")
    from sprintc.spec import load_spec

    spec = ck.spec if spec is None else load_spec(spec)
    ref = _model_ref(ck.path)
    if ref:
        model = user_model(ref, spec)
    else:
        from sprintc.compiler import build

        model = build(spec)
    sd = ck.ema if ema else ck.model
    check_state_dict(model, sd, ck.path / ("ema.safetensors" if ema else "model.safetensors"))
    model.load_state_dict(sd)
    return model.to(device).eval()


def _model_ref(path: Path) -> str | None:
    """The `--model pkg.module:factory` a run was started with, if any."""
    manifest = json.loads((path / "manifest.json").read_text())
    if "model_ref.txt" not in manifest["files"]:
        return None
    return _read_verified(path, "model_ref.txt", manifest).decode().strip()


def user_model(ref: str, spec=None):
    """A user model from `pkg.module:factory` (sprintc.transforms.load_user_model), rewritten in place with
    the spec's passes unless the factory already did that or the spec lists none."""
    try:
        from sprintc.transforms import load_user_model, transform
    except ImportError:
        raise CheckpointError(f"--model {ref}: user models need sprintc.transforms.load_user_model, which this "
                              "installation lacks") from None
    model = load_user_model(ref)
    if spec is not None and spec.passes and "sprint" not in model._modules:
        from sprintc.compiler import example_inputs

        x, t, y = example_inputs(spec, 2)  # the spec's input: one batch tells transform the shapes
        transform(model, {"passes": [p.model_dump() for p in spec.passes]}, grid=spec.model.grid,
                  example_inputs=(x, t) if y is None else (x, t, y))
    return model
