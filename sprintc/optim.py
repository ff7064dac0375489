"""AdamW over bf16 matmul weights with float32 master copies (`train.master_weights`).

Under bf16 autocast every forward casts each float32 matmul weight to bf16 (read 4 bytes, write 2), and the
backward casts each bf16 weight gradient to float32 (read 2, write 4) before clipping and AdamW read it (4 bytes
each). `MasterAdamW` keeps the weights and biases of the modules autocast runs in bf16 (Linear, Conv) as bf16
parameters, views of one flat buffer, and their moments in flat float32 buffers. The float32 masters are not a third
copy: a float32's top 16 bits are a bf16, so each master is its bf16 weight (rounded to nearest) plus an int16 low part
in a fourth flat buffer (`split_master`, `join_master`). On CUDA a step reads the bf16 gradients where the backward
left them (a table of their addresses, no gather into a flat buffer): one kernel takes the clip norm, one updates the
master and the moments and writes the new bf16 weights and low parts: 26 bytes per parameter (28 with a float32 copy
beside the bf16 one). Each parameter starts at a multiple of ADAMW_BLOCK elements of the flat buffers (zero padding
between: 0.02% for XL), so that each program of the kernel works on one parameter's block.

What the model computes is autocast's: autocast rounds the same float32 weights to bf16, and the weight gradients
come out of bf16 matmuls either way. The update is AdamW's, in float32 (torch's formula), save one case: a master
exactly halfway between two bf16 values that rounds down (a tie) is stored 1 float32 ulp lower, where the int16 low
part's range ends. Other parameters (norm weights, embeddings, the mask token) stay float32 and take torch's AdamW
step, each with its own step count; on CUDA in one kernel of ours over their own storage (`adamw_float32_`), as
torch's fused AdamW gives each program 65,536 elements and took 0.08 ms for XL's label embedding. Another difference:
the bf16 weights share one step count, so one that misses steps (frozen a while) takes the others' bias correction.

`state_dict()` is torch AdamW's (step, exp_avg, exp_avg_sq per parameter), so checkpoints move between the two;
`float32_params()` gives the master values in the model's parameter order, which checkpoints and the EMA read.
`attach_ema` moves an EMA update into the same kernel pass (8 more bytes per parameter instead of a 12-byte pass).

`moments_dtype=torch.bfloat16` (`train.moments_dtype`, opt-in) keeps the bf16 weights' moments in bf16: 18 bytes per
parameter instead of 26, and 4 fewer bytes of memory. The arithmetic stays float32; each new moment is stored rounded
stochastically (`round_bf16_stochastic`), so that it is right on average: rounded to nearest, the second moment's decay
by beta2 = 0.999 per step (0.1%) is under half a bf16 step (0.2-0.4%), and it could not shrink. The random bits are a
hash of the element's place in the flat buffer and the step count (`moment_noise`), the same in the kernel and here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.adamw import adamw

LOW_PRECISION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# elements per program of the AdamW kernel; each parameter's place in the flat buffers starts at a multiple of it, so
# that a program's block lies in one parameter (kernels.GradientTable); the padding between stays zero
ADAMW_BLOCK = 2048


def _aligned(n: int) -> int:
    return -(-n // ADAMW_BLOCK) * ADAMW_BLOCK


def low_precision_params(model: nn.Module) -> list[nn.Parameter]:
    """The float32 trainable weights and biases of the modules autocast runs in low precision; the weights of the
    model's modulation tables first, each table's next to each other (one matmul each, sprintc/modulation.py)."""
    from sprintc.modulation import table_linears

    seen, out = set(), []
    for m in table_linears(model):
        if m.weight.requires_grad and m.weight.dtype == torch.float32 and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    for m in model.modules():
        if isinstance(m, LOW_PRECISION_MODULES):
            for p in (m.weight, m.bias):
                if p is not None and p.requires_grad and p.dtype == torch.float32 and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


class MasterAdamW(torch.optim.Optimizer):
    """AdamW (torch's formula and defaults) for `model`, whose Linear / Conv parameters become `dtype` views of a flat
    buffer that each step rewrites from float32 masters. Build it after the model is on its device and lowered,
    before the first forward. `clip_and_step(max_norm)` clips the gradients to total norm max_norm and steps, without
    a host sync, and returns the norm; the lr may be a device tensor (a CUDA-graph-captured step)."""

    def __init__(self, model: nn.Module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 moments_dtype: torch.dtype = torch.float32):
        if moments_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"MasterAdamW: moments in float32 or bfloat16, not {moments_dtype}")
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.low = low_precision_params(model)
        if not self.low:
            raise ValueError("MasterAdamW: the model has no float32 Linear or Conv parameters")
        low_ids = {id(p) for p in self.low}
        self.rest = [p for p in params if id(p) not in low_ids]
        dev = self.low[0].device
        n = sum(_aligned(p.numel()) for p in self.low)
        self.exp_avg = torch.zeros(n, dtype=moments_dtype, device=dev)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.weights = torch.zeros(n, dtype=torch.bfloat16, device=dev)
        self.master_low = torch.zeros(n, dtype=torch.int16, device=dev)
        self._tables = {}
        self.step_count = torch.zeros((), dtype=torch.float32, device=dev)
        self._lr = torch.zeros((), dtype=torch.float32, device=dev)
        self.ema, self._ema_rest, self.ema_weight = None, [], torch.ones((), dtype=torch.float32, device=dev)
        self._view_of = {}
        off = 0
        with torch.no_grad():
            for p in self.low:
                view = slice(off, off + p.numel())
                off += _aligned(p.numel())
                # one parameter at a time (small temporaries); the weights rounded as autocast rounds
                self.weights[view], self.master_low[view] = split_master(p.detach().reshape(-1))
                p.data = self.weights[view].view(p.shape)
                self._view_of[id(p)] = view
                self.state[p] = {"step": self.step_count, "exp_avg": self.exp_avg[view].view(p.shape),
                                 "exp_avg_sq": self.exp_avg_sq[view].view(p.shape)}
        for p in self.rest:
            self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                             "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    def _table(self, params):
        """The GradientTable over these bf16 parameters' gradients (all of them, or those not frozen), built once."""
        key = tuple(id(p) for p in params)
        if key not in self._tables:
            from sprintc.kernels import GradientTable

            views = [self._view_of[id(p)] for p in params]
            self._tables[key] = GradientTable([v.stop - v.start for v in views], [v.start for v in views],
                                              self.weights.device)
        return self._tables[key]

    def _float32_table(self, params):
        """The Float32Params over these float32 parameters with gradients (CUDA), built once; None where a parameter or
        gradient is not float32, or a parameter not contiguous (torch's AdamW steps them)."""
        if not params or not self.weights.is_cuda or any(
                p.dtype != torch.float32 or p.grad.dtype != torch.float32 or not p.is_contiguous() for p in params):
            return None
        key = ("float32",) + tuple(id(p) for p in params)
        if key not in self._tables:
            from sprintc.kernels import Float32Params

            st = [self.state[p] for p in params]
            self._tables[key] = Float32Params(params, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
                                              [s["step"] for s in st], self.weights.device)
        return self._tables[key]

    def masters(self) -> torch.Tensor:
        """The float32 masters, one flat buffer (a new one, made from the weights and their low parts)."""
        return join_master(self.weights, self.master_low)

    def restore(self):
        """Give the model its float32 parameters back (the masters), e.g. after training; no step after this."""
        for p, value in zip(self.low, self.float32_params(self.low)):
            p.data = value

    def attach_ema(self, ema: nn.Module, model: nn.Module):
        """Update `ema` (a copy of `model`, float32) inside each step: ema = lerp(ema, new weights, ema_weight), the
        bf16 weights' part in the same kernel pass, which reads the new masters anyway. Its parameters that mirror the
        bf16 weights become views of a flat buffer. Set `ema_weight` (1 - decay, a device tensor) before each step."""
        pairs = list(zip(ema.parameters(), model.parameters()))
        if len(pairs) != len(list(model.parameters())) or any(e.shape != p.shape for e, p in pairs):
            raise ValueError("attach_ema: the EMA model does not mirror the model's parameters")
        self.ema = torch.zeros_like(self.exp_avg, dtype=torch.float32)
        rest = []
        with torch.no_grad():
            for e, p in pairs:
                if id(p) in self._view_of:
                    view = self._view_of[id(p)]
                    self.ema[view].copy_(e.reshape(-1))
                    e.data = self.ema[view].view(e.shape)
                else:
                    rest.append((e, p))
        self._ema_rest = rest

    def float32_params(self, params) -> list[torch.Tensor]:
        """For each of `params` (the model's, in its order): the float32 master (a copy), or the parameter itself."""
        flat = self.masters()
        return [flat[self._view_of[id(p)]].view(p.shape) if id(p) in self._view_of else p for p in params]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.clip_and_step(0.0)
        return loss

    @torch.no_grad()
    def clip_and_step(self, max_norm: float):
        g = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
        lr_t = lr if isinstance(lr, torch.Tensor) else self._lr.fill_(lr)
        have = [p for p in self.low if p.grad is not None]  # all of them unless some are frozen
        low_grads = [p.grad for p in have]  # the kernels' table copies any it cannot read in place
        rest = [p for p in self.rest if p.grad is not None]
        table = self._table(have) if have and self.weights.is_cuda else None
        rest_table = self._float32_table(rest)
        if table is not None or rest_table is not None:
            from sprintc.kernels import adamw_float32_, adamw_master_, grad_norm  # imports triton: CUDA only

            # held until the kernels are launched
            low_grads = table.point(low_grads) if table is not None else low_grads
            rest_grads = rest_table.grads.point([p.grad for p in rest]) if rest_table is not None else None
        norm = scale = None
        if max_norm > 0:
            parts = [grad_norm(table)] if table is not None else [torch.linalg.vector_norm(x, dtype=torch.float32)
                                                                  for x in low_grads]
            # the parameters kept in float32 (XL: 56 q/k norm weights and the label embedding): one kernel over their
            # table, else one multi-tensor kernel (a vector_norm each was 57 kernels per step)
            if rest_table is not None:
                parts.append(grad_norm(rest_table.grads))
            elif rest:
                parts += torch._foreach_norm([p.grad for p in rest], 2, dtype=torch.float32)
            norm = torch.linalg.vector_norm(torch.stack(parts))
            # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); the update divides by its inverse
            scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
        self.step_count += 1
        hp = (lr_t, self.step_count, scale, beta1, beta2, eps, wd)
        if table is not None:  # one kernel reads every gradient where it lies (and updates their EMA)
            adamw_master_(self.weights, self.master_low, table, self.exp_avg, self.exp_avg_sq, *hp, self.ema,
                          self.ema_weight)
        elif have:  # the same arithmetic in torch ops, parameter by parameter (CPU)
            master = self.masters()
            for p, x in zip(have, low_grads):
                st, view = self.state[p], self._view_of[id(p)]
                _update(master[view].view(p.shape), p.data, x, st["exp_avg"], st["exp_avg_sq"], *hp, at=view.start)
            weights, low = split_master(master)
            self.weights.copy_(weights)
            self.master_low.copy_(low)
        missed = self.low if table is None else [p for p in self.low if p.grad is None]
        if self.ema is not None and missed:
            views, master = [self._view_of[id(p)] for p in missed], self.masters()
            torch._foreach_lerp_([self.ema[v] for v in views], [master[v] for v in views],
                                 [self.ema_weight] * len(views))
        if rest_table is not None:
            torch._foreach_add_([self.state[p]["step"] for p in rest], 1)
            adamw_float32_(rest_table, lr_t, scale, beta1, beta2, eps, wd)
        elif rest:
            grads = [p.grad for p in rest]
            if scale is not None:
                torch._foreach_div_(grads, scale)
            st = [self.state[p] for p in rest]
            fused = rest[0].is_cuda
            adamw(rest, grads, [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st], [],
                  [s["step"] for s in st], foreach=not fused, fused=fused, capturable=fused,
                  amsgrad=False, beta1=beta1, beta2=beta2, lr=lr_t if fused else float(lr), weight_decay=wd, eps=eps,
                  maximize=False)
        if self._ema_rest:
            e, p = zip(*self._ema_rest)
            torch._foreach_lerp_(list(e), [x.detach() for x in p], [self.ema_weight] * len(e))
        return norm

    def state_dict(self):
        sd = super().state_dict()
        # a step tensor per parameter, as torch's AdamW keeps it (it adds 1 to each: a shared one would count N times)
        sd["state"] = {i: {**s, "step": s["step"].clone()} for i, s in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict):
        """Takes torch AdamW's format (its own or torch.optim.AdamW's), values copied into the flat buffers."""
        groups = state_dict["param_groups"]
        ids = [i for grp in groups for i in grp["params"]]
        params = self.param_groups[0]["params"]
        if len(ids) != len(params):
            raise ValueError(f"the state holds {len(ids)} parameters, the model {len(params)}")
        for k in ("lr", "betas", "eps", "weight_decay"):
            if k in groups[0]:
                self.param_groups[0][k] = groups[0][k]
        low_ids = {id(p) for p in self.low}
        with torch.no_grad():
            for i, p in zip(ids, params):
                saved = state_dict["state"].get(i)
                if saved is None:
                    continue
                for k in ("exp_avg", "exp_avg_sq"):
                    if tuple(saved[k].shape) != tuple(p.shape):
                        raise ValueError(f"{k} of shape {tuple(saved[k].shape)} for a parameter of shape {tuple(p.shape)}")
                    self.state[p][k].copy_(saved[k])
                step = torch.as_tensor(saved["step"], dtype=torch.float32)
                (self.step_count if id(p) in low_ids else self.state[p]["step"]).copy_(step)


def split_master(master: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 values as (bf16 rounded to nearest, ties to even; int16 low part) such that join_master gives them
    back: the bits' difference, clamped to int16 (a tie rounded down comes back 1 ulp lower, and still rounds to the
    same bf16). The AdamW kernel splits its new masters the same way."""
    weights = master.to(torch.bfloat16)
    low = weights.view(torch.int16).to(torch.int32).bitwise_left_shift_(16)
    torch.sub(master.view(torch.int32), low, out=low)
    return weights, low.clamp_(max=32767).to(torch.int16)


def join_master(weights: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The float32 values that split_master split."""
    return ((weights.view(torch.int16).to(torch.int32) << 16) + low.to(torch.int32)).view(torch.float32)


def _update(master, weights, grads, exp_avg, exp_avg_sq, lr, step, scale, beta1, beta2, eps, wd, at=0):
    """The kernel's arithmetic in torch ops, in the order of torch's foreach AdamW: the CPU step and the tests'
    reference. bf16 moments are computed in float32 and stored as the kernel stores them (`at`: the place of their
    first element in MasterAdamW's flat buffers)."""
    g = grads.float() if scale is None else grads.float() / scale
    lr, step = float(lr), float(step)
    m, v = exp_avg.float(), exp_avg_sq.float()  # (the moments themselves, if float32)
    master.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = v.sqrt().div_((1 - beta2 ** step) ** 0.5).add_(eps)
    master.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))
    weights.copy_(master)
    if exp_avg.dtype == torch.bfloat16:
        noise = moment_noise(at, m.numel(), int(step)).view(m.shape)
        exp_avg.copy_(round_bf16_stochastic(m, noise & 0xFFFF))
        exp_avg_sq.copy_(round_bf16_stochastic(v, noise >> 16))


_U32 = 0xFFFFFFFF


def _mul_u32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c modulo 2**32 for uint32 values held in int64, in 16-bit halves (no int64 overflow)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _U32


def moment_noise(start: int, n: int, step: int) -> torch.Tensor:
    """32 random bits (uint32 values in int64) for the flat buffers' elements start..start+n-1 at this step: a
    multiplicative hash of place and step, then the `lowbias32` finalizer (C. Wellons). The AdamW kernel computes the
    same bits in uint32 (kernels._moment_noise)."""
    x = (_mul_u32(torch.arange(start, start + n, dtype=torch.int64), 0x9E3779B1) + step * 0x85EBCA77) & _U32
    x ^= x >> 16
    x = _mul_u32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul_u32(x, 0x846CA68B)
    return x ^ (x >> 16)


def round_bf16_stochastic(x: torch.Tensor, noise16: torch.Tensor) -> torch.Tensor:
    """float32 values to bf16, rounded up in magnitude with probability (the dropped 16 bits) / 2**16, given 16
    uniform random bits per value: the expected result is x (stochastic rounding)."""
    bits = x.float().view(torch.int32).to(torch.int64) + noise16
    return (bits >> 16).to(torch.int16).view(torch.bfloat16)


def adamw_for(model: nn.Module, train_spec, lr, device: torch.device, *, master: bool, capturable: bool = False):
    """The training step's optimizer: MasterAdamW (`master`, for a model with float32 Linear / Conv weights), else
    torch's AdamW, fused on CUDA."""
    kw = dict(lr=lr, betas=tuple(train_spec.betas), eps=train_spec.eps, weight_decay=train_spec.weight_decay)
    if master and low_precision_params(model):
        return MasterAdamW(model, **kw, moments_dtype=getattr(torch, train_spec.moments_dtype))
    if device.type == "cuda":
        return torch.optim.AdamW(model.parameters(), fused=True, capturable=capturable, **kw)
    return torch.optim.AdamW(model.parameters(), foreach=True, **kw)


def float32_params(model: nn.Module, optimizer) -> list[torch.Tensor]:
    """The model's parameters, in its order, as float32 values: MasterAdamW's masters where it keeps them."""
    params = list(model.parameters())
    return optimizer.float32_params(params) if isinstance(optimizer, MasterAdamW) else params


def float32_state_dict(model: nn.Module, optimizer, state: dict) -> dict:
    """`state` (the model's state dict) with MasterAdamW's masters in place of the bf16 weights."""
    if not isinstance(optimizer, MasterAdamW):
        return state
    state = dict(state)
    names, params = zip(*model.named_parameters())
    for name, p, value in zip(names, params, optimizer.float32_params(params)):
        if value is not p:
            if name not in state:
                raise KeyError(f"float32_state_dict: parameter {name} is not in the state dict")
            state[name] = value
    return state
