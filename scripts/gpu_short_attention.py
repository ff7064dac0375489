"""sprintc's short-sequence attention (sprintc/kernels.py, short_attention) against scaled_dot_product_attention at
the XL shapes of a batch-128 training step (16 heads of 72; 64 kept tokens in the routed blocks at 75% drop, 128 at
50%, 256 in the dense blocks), bf16, q, k, v and the output's gradient in token-major memory as in the step: ms per
call of the forward and of forward + backward (CUDA graph, median of 5), for several (forward, backward) warp
counts, and the relative error of each against SDPA in float32. On the device: python3 scripts/gpu_short_attention.py
[JSON]"""
import json
import sys

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from gpu_qk_kernels import timed

B, H, DH = 128, 16, 72
WARPS = ((4, 8), (4, 4), (8, 8), (2, 4), (4, 2))


def token_major(n):
    return torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()


def rel(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


rows = []
for n in (64, 128, 32):
    q, k, v = token_major(n), token_major(n), token_major(n)
    grad = torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    want = torch.autograd.grad(ref, (q, k, v), grad.float())
    arms = [("sdpa", F.scaled_dot_product_attention, None)] + [(f"sprintc w{w}", K.short_attention, w) for w in WARPS]
    for name, fn, warps in arms:
        if warps:
            K.ATTENTION_WARPS = warps
        out = fn(q, k, v)
        got = torch.autograd.grad(out, (q, k, v), grad)
        fwd = timed(lambda: fn(q, k, v))
        both = timed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad))
        rows.append({"tokens": n, "arm": name, "fwd_ms": round(fwd, 4), "fwd_bwd_ms": round(both, 4),
                     "rel_err": [round(rel(a, b), 5) for a, b in zip([out, *got], [ref, *want])]})
        print(json.dumps(rows[-1]), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
