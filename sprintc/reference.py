"""The reference SPRINT SiT's checkpoints: its state-dict layout and its constructor config.

The reference stores blocks as encoder_blocks.i / middle_blocks.j / decoder_blocks.k, the fusion as
renoise_linear and the mask token as mask_token; sprintc keeps one list `blocks.i` and puts what the
passes add under `sprint.`."""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from sprintc.errors import CheckpointError

_STAGE = re.compile(r"^(encoder|middle|decoder)_blocks\.(\d+)\.(.*)$")


def stage_sizes(keys) -> tuple[int, int, int]:
    found = {"encoder": set(), "middle": set(), "decoder": set()}
    for k in keys:
        m = _STAGE.match(k)
        if m:
            found[m.group(1)].add(int(m.group(2)))
    return tuple(len(found[s]) for s in ("encoder", "middle", "decoder"))


def to_sprintc_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    enc, mid, _ = stage_sizes(state)
    offset = {"encoder": 0, "middle": enc, "decoder": enc + mid}
    out = {}
    for k, v in state.items():
        m = _STAGE.match(k)
        if m:
            k = f"blocks.{offset[m.group(1)] + int(m.group(2))}.{m.group(3)}"
        elif k.startswith("renoise_linear."):
            k = "sprint.fuse.linear." + k.removeprefix("renoise_linear.")
        elif k == "mask_token":
            k = "sprint.mask_token"
        out[k] = v
    return out


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: reference checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file: say which and why, never a traceback
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    for key in ("ema", "model", "state_dict"):  # the reference saves {"model", "ema", "opt", "args"}
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return state[key]
    return state


def load_reference(model: nn.Module, source, strict: bool = True) -> nn.Module:
    """Load a reference SPRINT state dict (path or dict) into a sprintc model. Every missing, unexpected
    or mis-shaped key is listed in one error."""
    state = read_state(source) if not isinstance(source, dict) else source
    enc, mid, dec = stage_sizes(state)
    part = getattr(getattr(model, "sprint", None), "stages", None)
    if part is not None and (enc, mid, dec) != tuple(part):
        raise CheckpointError(f"{source if not isinstance(source, dict) else 'state dict'}: the reference splits its blocks "
                              f"{enc}/{mid}/{dec} (encoder/middle/decoder) but the model is partitioned {part[0]}/{part[1]}/{part[2]}")
    state = to_sprintc_keys(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if strict and (missing or unexpected or shapes):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        if shapes:
            parts.append(f"mis-shaped keys ({len(shapes)}): " + "; ".join(shapes))
        where = source if not isinstance(source, dict) else "state dict"
        raise CheckpointError(f"{where} does not match the model:\n  " + "\n  ".join(parts))
    model.load_state_dict(state, strict=strict)
    return model


def spec_from_config(config: dict, name: str = "reference") -> dict:
    """A sprintc spec (dict) of the reference constructor config (the fixture's `config`)."""
    depth = config["encoder_depth"] + config["middle_depth"] + config["decoder_depth"]
    norm = {"RMSNorm": "rms", "LayerNorm": "layer", None: "none"}[config.get("q_norm")]
    passes = [{"name": "partition", "encoder": config["encoder_depth"], "decoder": config["decoder_depth"]},
              {"name": "route", "sampler": "structured", "drop": config.get("mask_ratio", 0.75)}]
    if config.get("residual_type", "concat_linear") == "concat_linear":
        passes.append({"name": "fuse", "kind": "concat_linear"})
    passes += [{"name": "path_drop", "p": config.get("cfg_mask_prob", 0.1)}, {"name": "pdg"}]
    return {
        "name": name,
        "model": {"input": {"channels": config["in_channels"], "size": config["context_size"]},
                  "patch": config["patch_size"], "width": config["hidden_size"], "depth": depth,
                  "heads": config["num_heads"], "qk_norm": norm, "pos": "rope", "mlp": "gelu_tanh",
                  "num_classes": config["num_classes"], "class_dropout": config.get("class_dropout_prob", 0.1)},
        "passes": passes,
    }
