"""MasterAdamW's kernel alone at SiT-XL's size (678M bf16 weights): ms per step and GB/s for a few block sizes and
warps, with and without the EMA; then the torch fused AdamW over the same count in float32 for scale.
    python3 scripts/gpu_adamw.py [OUT.json]"""
import json
import sys

import torch

import sprintc.kernels as K

N = 678_000_000
dev = "cuda"
master, m, v, ema = (torch.randn(N, device=dev) * 0.01 for _ in range(4))
v.abs_()
weights = torch.empty(N, device=dev, dtype=torch.bfloat16)
grads = torch.randn(N, device=dev).bfloat16()
lr, step, scale, ema_w = (torch.tensor(x, device=dev) for x in (1e-4, 10.0, 1.5, 1e-4))


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


rows = []
for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 8)):
    K.ADAMW_BLOCK, K.ADAMW_WARPS = block, warps
    for with_ema in (False, True):
        ms = timed(lambda: K.adamw_master_(master, weights, grads, m, v, lr, step, scale, 0.9, 0.999, 1e-8, 0.0,
                                           ema if with_ema else None, ema_w if with_ema else None))
        moved = N * (28 + (8 if with_ema else 0))
        rows.append(dict(block=block, warps=warps, ema=with_ema, ms=round(ms, 3), tb_s=round(moved / ms / 1e9, 2)))
        print(rows[-1], flush=True)
del ema, weights
p = [master]
g32 = [grads.float()]
opt_state = ([m], [v], [torch.zeros((), device=dev)])
ms = timed(lambda: torch._fused_adamw_(p, g32, opt_state[0], opt_state[1], [], opt_state[2], lr=lr, beta1=0.9, beta2=0.999,
                                       weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False, grad_scale=scale,
                                       found_inf=None))
rows.append(dict(code="torch _fused_adamw_ float32, one tensor", ms=round(ms, 3), tb_s=round(N * 28 / ms / 1e9, 2)))
print(rows[-1], flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
