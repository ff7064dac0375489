"""MasterAdamW's kernels alone at SiT-XL's size (28 blocks of bf16 Linear weights and biases, about 676M): the clip
norm and the AdamW kernel reading the gradients where they lie (a GradientTable, as the optimizer does) against
gathering them into one flat buffer first (the optimizer up to session M), with and without the EMA; then torch's
fused AdamW over the same count in float32 for scale.
    python3 scripts/gpu_adamw.py [OUT.json]"""
import json
import sys

import torch

import sprintc.kernels as K
from sprintc.optim import _aligned, split_master

D, dev = 1152, "cuda"
shapes = [(3 * D, D), (3 * D,), (D, D), (D,), (4 * D, D), (4 * D,), (D, 4 * D), (D,), (6 * D, D), (6 * D,)] * 28
sizes = [torch.Size(s).numel() for s in shapes]
padded = [_aligned(k) for k in sizes]  # MasterAdamW's layout
offsets = [sum(padded[:i]) for i in range(len(sizes))]
N = sum(padded)
master, m, v, ema = (torch.randn(N, device=dev) * 0.01 for _ in range(4))
v.abs_()
weights, low = split_master(master)  # the masters as MasterAdamW holds them: bf16 weights + int16 low parts
grads = [torch.randn(s, device=dev).bfloat16() for s in sizes]
flat = torch.empty(N, device=dev, dtype=torch.bfloat16)
lr, step, ema_w = (torch.tensor(x, device=dev) for x in (1e-4, 10.0, 1e-4))
in_place = K.GradientTable(sizes, offsets, dev)
in_place.point(grads)
gathered = K.GradientTable([sum(sizes)], [0], dev)  # one flat tensor, as up to session M
gathered.point([flat[:sum(sizes)]])


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def step_in_place(with_ema):
    scale = torch.clamp(K.grad_norm(in_place) / 1.0, min=1.0)
    K.adamw_master_(weights, low, in_place, m, v, lr, step, scale, 0.9, 0.999, 1e-8, 0.0,
                    ema if with_ema else None, ema_w if with_ema else None)


def step_gathered(with_ema):  # as up to session M (whose kernel indexed the flat buffer without a table)
    torch.cat(grads, out=flat[:sum(sizes)])
    scale = torch.clamp(torch.linalg.vector_norm(flat, dtype=torch.float32) / 1.0, min=1.0)
    K.adamw_master_(weights, low, gathered, m, v, lr, step, scale, 0.9, 0.999, 1e-8, 0.0,
                    ema if with_ema else None, ema_w if with_ema else None)


rows = [dict(params=N, tensors=len(sizes))]
print(rows[-1], flush=True)
for name, fn in (("in place", step_in_place), ("gathered", step_gathered)):
    for with_ema in (False, True):
        rows.append(dict(code=f"clip norm + AdamW, gradients {name}", ema=with_ema, ms=round(timed(lambda: fn(with_ema)), 3)))
        print(rows[-1], flush=True)
rows.append(dict(code="grad_norm alone (in place)", ms=round(timed(lambda: K.grad_norm(in_place)), 3)))
rows.append(dict(code="AdamW kernel alone (in place)", tb_s=None,
                 ms=round(timed(lambda: K.adamw_master_(weights, low, in_place, m, v, lr, step, None, 0.9, 0.999,
                                                        1e-8, 0.0)), 3)))
rows[-1]["tb_s"] = round(N * 26 / rows[-1]["ms"] / 1e9, 2)  # 14 bytes read, 12 written
one = torch.tensor(1.5, device=dev)
rows.append(dict(code="AdamW kernel alone (in place), with the clip's divisor",
                 ms=round(timed(lambda: K.adamw_master_(weights, low, in_place, m, v, lr, step, one, 0.9, 0.999,
                                                        1e-8, 0.0)), 3)))
rows.append(dict(code="torch.cat of the gradients alone", ms=round(timed(lambda: torch.cat(grads, out=flat[:sum(sizes)])), 3)))
for r in rows[-4:]:
    print(r, flush=True)
del ema, weights, low, flat
g32 = [torch.cat(grads + [torch.zeros(N - sum(sizes), device=dev, dtype=torch.bfloat16)]).float()]
del grads
opt_state = ([m], [v], [torch.zeros((), device=dev)])
ms = timed(lambda: torch._fused_adamw_([master], g32, opt_state[0], opt_state[1], [], opt_state[2], lr=lr, beta1=0.9,
                                       beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                                       grad_scale=None, found_inf=None))
rows.append(dict(code="torch _fused_adamw_ float32, one tensor", ms=round(ms, 3), tb_s=round(N * 28 / ms / 1e9, 2)))
print(rows[-1], flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
