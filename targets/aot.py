"""aot: torch.export + AOTInductor package of the guided sampling step.

`export_aot(built, "model.pt2")` writes one file that runs without sprintc or the model's Python code:

    runner = torch._inductor.aoti_load_package("model.pt2")
    v = runner(x, t, y, scale)        # x (B, C, H, W) float32, t (B,) float32, y (B,) int64, scale () float32
    runner.get_metadata()             # {'sprintc.spec': ..., 'sprintc.guidance': 'pdg', ...}

The exported function is one guided step: labels [y; null], the PDG graph (model.forward_guidance) or
the dense model (CFG) on [x; x], then u + scale (c - u) on the C prediction channels. The batch size is
dynamic (1..max_batch). Weights are stored in the target dtype; the output is float32.

In process, `lower(model, 'aot')` runs the same Inductor code just in time (as the inductor target):
the ahead-of-time artefact is for deployment and for `sprintc build SPEC --target aot`.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from sprintc.errors import first_line
from sprintc.spec import TargetSpec
from sprintc.targets_api import TargetError, compute_dtype, resolve_device, resolve_target


def lower(model: nn.Module, target: TargetSpec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    from sprintc.targets import inductor

    return inductor.lower(model, target, device, dtype)


class GuidedStep(nn.Module):
    """(x, t, y, scale) -> guided prediction; what the package holds."""

    def __init__(self, model: nn.Module, guidance: str, null: int, channels: int, dtype: torch.dtype):
        super().__init__()
        self.model, self.guidance, self.null, self.channels, self.dtype = model, guidance, null, channels, dtype

    def forward(self, x, t, y, scale):
        xin, tin = x.to(self.dtype), t.to(self.dtype)
        if self.guidance == "none":
            return self.model(xin, tin, y).float()
        x2, t2 = torch.cat([xin, xin]), torch.cat([tin, tin])
        y2 = torch.cat([y, torch.full_like(y, self.null)])
        out = (self.model.forward_guidance(x2, t2, y2) if self.guidance == "pdg" else self.model(x2, t2, y2)).float()
        n = x.shape[0]
        c, u = out[:n], out[n:]
        C = self.channels
        g = u[:, :C] + scale * (c[:, :C] - u[:, :C])
        return g if C == c.shape[1] else torch.cat([g, c[:, C:]], 1)


def export_aot(built, out_path, *, target=None, device=None, guidance: str | None = None, batch: int = 2,
               max_batch: int = 1024) -> dict:
    """Export the guided sampling step of `built` (a compiler.Built) to an AOTInductor package at
    `out_path` (model.pt2). guidance: the spec's sample.guidance by default ('pdg' needs the pdg pass;
    an unconditional model exports 'none'). Returns a summary dict (path, bytes, seconds, guidance)."""
    spec = built.spec
    t = resolve_target(target if target is not None else spec.target)
    dev = resolve_device(t, device)
    dtype = compute_dtype(t, dev)
    m = spec.model
    g = guidance or spec.sample.guidance
    if m.num_classes == 0:
        g = "none"
    if g == "pdg" and not callable(getattr(built.model, "forward_guidance", None)):
        raise TargetError("aot: guidance pdg needs the pdg pass in the spec (`- name: pdg`); the spec has "
                          f"passes: {', '.join(p.name for p in spec.passes) or 'none'}; export with guidance cfg")
    if g not in ("pdg", "cfg", "none"):
        raise TargetError(f"aot: unknown guidance {g!r}; known: pdg, cfg, none")
    net = copy.deepcopy(built.model).eval().requires_grad_(False).to(dev)
    for p in net.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    step = GuidedStep(net, g, m.num_classes, m.input.channels, dtype).eval()
    shape = (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    x = torch.randn(batch, *shape, device=dev)
    tt = torch.rand(batch, device=dev)
    y = torch.randint(0, max(m.num_classes, 1), (batch,), device=dev)
    scale = torch.tensor(spec.sample.scale, device=dev)
    B = torch.export.Dim("batch", min=1, max=max_batch)
    dyn = {"x": {0: B}, "t": {0: B}, "y": {0: B}, "scale": None}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        try:
            ep = torch.export.export(step, (x, tt, y, scale), dynamic_shapes=dyn)
        except Exception as e:  # an export failure is a bug of ours, but say what failed
            raise TargetError(f"aot: torch.export of the guided step failed: {type(e).__name__}: {first_line(e)}") from e
        t_export = time.perf_counter() - t0
        meta = {"sprintc.spec": json.dumps(spec.model_dump(mode="json")), "sprintc.guidance": g,
                "sprintc.dtype": t.dtype, "sprintc.scale": str(spec.sample.scale),
                "sprintc.inputs": "x (B,C,H,W) float32, t (B,) float32, y (B,) int64, scale () float32"}
        path = torch._inductor.aoti_compile_and_package(
            ep, package_path=str(out_path), inductor_configs={"aot_inductor.metadata": meta})
    return {"path": str(path), "bytes": Path(path).stat().st_size, "guidance": g, "device": str(dev),
            "dtype": t.dtype, "export_s": round(t_export, 2), "total_s": round(time.perf_counter() - t0, 2)}
