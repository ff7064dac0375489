"""Samplers for sprintc models: SiT flow ODE (Euler, Heun) and SDE (Euler-Maruyama, the reference
schedule), DDPM (ancestral) and DDIM for eps-prediction models; guidance none / CFG / PDG.

Conventions (the same as training):
- flow (`train.objective: flow`): x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, t in [0, 1]
  is fed to the model as is; sampling runs from t = 1 (noise) to t = 0 (data).
- ddpm (`train.objective: ddpm`): linear betas linspace(1e-4, 0.02, 1000) (float64), the model predicts
  eps and is fed the integer timestep 0..999 as a float (DiT's convention; `ddpm_model_time`). With
  `learn_sigma` it outputs 2C channels: eps, then the variance interpolation in [-1, 1] (ADM).
- Guidance: guided = u + w (c - u) on every one of the C prediction channels (the learned-variance
  channels, if any, are the conditional half's, as in DiT). The guidance interval [low, high] is in t;
  for ddpm t = timestep / 1000. Outside it, or with w == 1 or guidance none, only the conditional
  batch runs, through `model.forward` (never the guidance graph).
The sampler state is float64; the model runs in its own dtype.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from sprintc.errors import SprintcError
from sprintc.spec import Spec, load_spec

DDPM_STEPS = 1000
SAMPLERS = ("sde", "euler", "heun", "ddpm", "ddim")
GUIDANCES = ("none", "cfg", "pdg")


def ddpm_betas(device=None) -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, DDPM_STEPS, dtype=torch.float64, device=device)


def ddpm_alphas_cumprod(device=None) -> torch.Tensor:
    return torch.cumprod(1 - ddpm_betas(device), 0)


def ddpm_model_time(step: torch.Tensor) -> torch.Tensor:
    """What an eps-prediction model is fed for the integer timestep `step` (0..999)."""
    return step.float()


def respaced_timesteps(steps: int) -> list[int]:
    """`steps` timesteps of the 1000, evenly spaced and including 0 and 999 (ADM's respacing)."""
    if not 1 <= steps <= DDPM_STEPS:
        raise SprintcError(f"steps: {steps} is out of range for ddpm/ddim; allowed 1..{DDPM_STEPS}")
    if steps == 1:
        return [DDPM_STEPS - 1]
    stride = (DDPM_STEPS - 1) / (steps - 1)
    return [round(i * stride) for i in range(steps)]


class Guided:
    """The model's prediction at one time for the whole batch, guidance applied. Counts the batch rows the
    model processed, split by graph ('forward' / 'guidance'), for FLOP accounting. `step_for(kind, batch)`,
    if given, returns a fixed-shape lowered step (x, t, y, scale) -> guided prediction for guidance `kind`
    ('none', 'cfg', 'pdg'), e.g. a CUDA-graph replay from sprintc.targets_api.lower_sampling_step, or None
    to call the model."""

    def __init__(self, model: nn.Module, labels, null: int, guidance: str, scale: float,
                 interval: tuple[float, float], channels: int, step_for=None):
        self.model, self.labels, self.guidance, self.scale = model, labels, guidance, scale
        self.low, self.high = interval
        self.channels = channels
        self.null = None if labels is None else torch.full_like(labels, null)
        self.step_for = step_for
        # a lowered model takes float32 inputs (it autocasts itself); a plain one its parameters' dtype
        lowered = model.__dict__.get("_sprintc_lowering") is not None
        pdt = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.dtype = torch.float32 if lowered else pdt
        self.calls = {"forward": 0, "guidance": 0}

    def guided_at(self, t: float) -> bool:
        return self.guidance != "none" and self.scale != 1 and self.low <= t <= self.high

    def __call__(self, x: torch.Tensor, t: float, model_t: float | None = None) -> torch.Tensor:
        B = x.shape[0]
        # time stays float32 even for bf16 weights: bf16 cannot hold DDPM steps above 256 exactly
        tt = torch.full((B,), t if model_t is None else model_t, dtype=torch.float32, device=x.device)
        xin = x.to(self.dtype)
        kind = self.guidance if self.guided_at(t) else "none"
        self.calls["guidance" if kind == "pdg" else "forward"] += B * (1 if kind == "none" else 2)
        step = self.step_for(kind, B) if self.step_for is not None else None
        if step is not None:
            return step(xin, tt, self.labels, self.scale).double()
        if kind == "none":
            return self.model(xin, tt, self.labels).double()
        x2, t2, y2 = torch.cat([xin, xin]), torch.cat([tt, tt]), torch.cat([self.labels, self.null])
        out = (self.model.forward_guidance if kind == "pdg" else self.model)(x2, t2, y2).double()
        c, u = out.chunk(2)
        C = self.channels
        return torch.cat([u[:, :C] + self.scale * (c[:, :C] - u[:, :C]), c[:, C:]], 1)


def _randn(shape, generator, device):
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=torch.float64).to(device)


# ------------------------------------------------------------------------------------------ flow
def flow_ode(f: Guided, x, steps: int, heun: bool, progress=None):
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for i in range(steps):
        t, tn = ts[i], ts[i + 1]
        v = f(x, t)[:, : f.channels]
        xn = x + (tn - t) * v
        if heun:  # trapezoid on the two velocities (2 evaluations per step)
            vn = f(xn, tn)[:, : f.channels]
            xn = x + (tn - t) * 0.5 * (v + vn)
        x = xn
        if progress:
            progress(i + 1, steps)
    return x


def _sde_drift(f: Guided, x, t):
    v = f(x, t)[:, : f.channels]
    score = -(x + (1 - t) * v) / t  # linear path: score of p_t from the velocity
    return v - 0.5 * (2 * t) * score  # g^2 = 2t


def flow_sde(f: Guided, x, steps: int, generator=None, progress=None):
    """Euler-Maruyama exactly as the reference: t = linspace(1, 0.04, steps) then a last deterministic
    step to 0 (the mean, no noise); `steps` model evaluations in all."""
    ts = torch.linspace(1.0, 0.04, steps, dtype=torch.float64).tolist() + [0.0]
    for i in range(steps - 1):
        t, tn = ts[i], ts[i + 1]
        dt = tn - t
        noise = _randn(x.shape, generator, x.device)
        x = x + _sde_drift(f, x, t) * dt + (2 * t) ** 0.5 * abs(dt) ** 0.5 * noise
        if progress:
            progress(i + 1, steps)
    t = ts[-2]
    x = x + _sde_drift(f, x, t) * (0.0 - t)
    if progress:
        progress(steps, steps)
    return x


# ------------------------------------------------------------------------------------------ ddpm
def ddpm_loop(f: Guided, x, steps: int, ddim: bool, learn_sigma: bool, generator=None, progress=None):
    ac_all = ddpm_alphas_cumprod(x.device)
    ts = respaced_timesteps(steps)
    C = f.channels
    for j in range(len(ts) - 1, -1, -1):
        step = ts[j]
        ac = ac_all[step]
        ac_prev = ac_all[ts[j - 1]] if j > 0 else torch.tensor(1.0, dtype=torch.float64, device=x.device)
        out = f(x, step / DDPM_STEPS, model_t=float(ddpm_model_time(torch.tensor(step))))
        eps = out[:, :C]
        x0 = (x - (1 - ac).sqrt() * eps) / ac.sqrt()
        if ddim:  # eta = 0
            x = ac_prev.sqrt() * x0 + (1 - ac_prev).sqrt() * eps
        else:
            beta = 1 - ac / ac_prev
            mean = (beta * ac_prev.sqrt() / (1 - ac)) * x0 + ((1 - ac_prev) * (1 - beta).sqrt() / (1 - ac)) * x
            x = mean
            if j > 0:  # the last step is the mean; before it add noise of the posterior (or learned) variance
                post_var = beta * (1 - ac_prev) / (1 - ac)
                if learn_sigma:  # ADM: interpolate the log variance between the posterior's and beta's
                    frac = (out[:, C : 2 * C] + 1) / 2
                    log_var = frac * beta.log() + (1 - frac) * post_var.log()
                else:
                    log_var = post_var.log()
                x = x + (0.5 * log_var).exp() * _randn(x.shape, generator, x.device)
        if progress:
            progress(len(ts) - j, len(ts))
    return x


# ------------------------------------------------------------------------------------------ API
def resolve(spec: Spec, guidance=None, scale=None, steps=None, sampler=None, interval=None):
    """The sampling settings: arguments override the spec's `sample:` section; checked."""
    s = spec.sample
    guidance = s.guidance if guidance is None else guidance
    scale = s.scale if scale is None else float(scale)
    steps = s.steps if steps is None else int(steps)
    sampler = s.sampler if sampler is None else sampler
    interval = tuple(s.interval if interval is None else interval)
    if guidance not in GUIDANCES:
        raise SprintcError(f"guidance: {guidance!r} is unknown; allowed: {', '.join(GUIDANCES)}")
    if sampler not in SAMPLERS:
        raise SprintcError(f"sampler: {sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    objective = spec.train.objective
    if objective == "ddpm" and sampler not in ("ddpm", "ddim"):
        raise SprintcError(f"sampler: {sampler!r} is a flow sampler but the spec trains eps-prediction (train.objective: ddpm); use ddpm or ddim")
    if objective == "flow" and sampler in ("ddpm", "ddim"):
        raise SprintcError(f"sampler: {sampler!r} needs an eps-prediction model but the spec trains flow (train.objective: flow); use sde, euler or heun")
    if steps < 1 or (sampler == "sde" and steps < 2):
        raise SprintcError(f"steps: {steps} is too few for the {sampler} sampler; allowed: >= {2 if sampler == 'sde' else 1}")
    if scale < 0:
        raise SprintcError(f"scale: {scale} must be >= 0")
    if len(interval) != 2 or not 0 <= interval[0] <= interval[1] <= 1:
        raise SprintcError(f"interval: {list(interval)} must be [low, high] with 0 <= low <= high <= 1")
    return guidance, scale, steps, sampler, interval


def check_guidance(model: nn.Module, spec: Spec, guidance: str, scale: float):
    if guidance == "none" or scale == 1:
        return
    if spec.model.num_classes == 0:
        raise SprintcError(f"guidance {guidance}: the model is unconditional (model.num_classes: 0), so there is no null label to guide with; use --guidance none")
    if guidance == "pdg" and not callable(getattr(model, "forward_guidance", None)):
        have = [p.name for p in spec.passes] or ["none"]
        raise SprintcError(f"guidance pdg: the model has no path-drop guidance graph (spec passes: {', '.join(have)}); "
                           "PDG needs the partition and pdg passes (`- name: pdg`); use --guidance cfg or none")


def sample(model: nn.Module, spec, labels, *, generator: torch.Generator | None = None, guidance=None, scale=None,
           steps=None, sampler=None, interval=None, noise: torch.Tensor | None = None,
           progress: Callable[[int, int], None] | None = None, stats: dict | None = None, step_for=None) -> torch.Tensor:
    """Sample len(labels) images in model space ((B, C, H, W), float32; [-1, 1] for pixel data).

    Unset options come from `spec.sample`. `noise` is the starting noise (float, the output's shape);
    otherwise it and all later noise come from `generator`. `progress(i, total)` is called per step;
    `stats`, if given, receives the model rows evaluated per graph ({'forward': n, 'guidance': n});
    `step_for(kind, batch)` supplies fixed-shape lowered steps (see `Guided`)."""
    spec = load_spec(spec)
    guidance, scale, steps, sampler, interval = resolve(spec, guidance, scale, steps, sampler, interval)
    check_guidance(model, spec, guidance, scale)
    m = spec.model
    device = next(model.parameters()).device
    if labels is None:
        if noise is None:
            raise SprintcError("sample: give labels (or, for an unconditional model, the starting noise)")
        B = noise.shape[0]
    else:
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        B = labels.numel()
    if m.num_classes:
        if labels is None:
            raise SprintcError(f"sample: the model is class-conditional (num_classes {m.num_classes}); give a label per image")
        bad = labels[(labels < 0) | (labels >= m.num_classes)]
        if bad.numel():
            raise SprintcError(f"class index {int(bad[0])} is out of range; the model has classes 0..{m.num_classes - 1}")
    else:
        labels = None
    shape = (B, m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    if noise is None:
        x = _randn(shape, generator, device)
    else:
        if tuple(noise.shape) != shape:
            raise SprintcError(f"noise: shape {tuple(noise.shape)} does not match the images {shape}")
        x = noise.to(device=device, dtype=torch.float64)
    f = Guided(model, labels, m.num_classes, guidance, scale, interval, m.input.channels, step_for)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if sampler in ("euler", "heun"):
                x = flow_ode(f, x, steps, sampler == "heun", progress)
            elif sampler == "sde":
                x = flow_sde(f, x, steps, generator, progress)
            else:
                x = ddpm_loop(f, x, steps, sampler == "ddim", m.learn_sigma, generator, progress)
    finally:
        model.train(was_training)
    if stats is not None:
        stats.update(f.calls)
    return x.float()
