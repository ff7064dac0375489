"""sprintc's short-sequence attention (sprintc/kernels.py, short_attention) against scaled_dot_product_attention at
the XL shapes of a batch-128 training step (16 heads of 72; 64 kept tokens in the routed blocks at 75% drop, 32 for
comparison), bf16, q, k, v and the output's gradient in token-major memory as in the step: ms per call of the forward
and of forward + backward (CUDA graph, median of 5) at several ATTENTION_WARPS (forward, backward), and the relative
error of each output and gradient against SDPA in float32.
On the device: python3 scripts/gpu_short_attention.py [JSON]"""
import json
import sys

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from gpu_qk_kernels import timed

B, H, DH = 128, 16, 72
ARMS = {64: [(4, 4), (4, 8), (8, 8), (2, 4)], 32: [(4, 4), (4, 8)]}


def token_major(n):
    return torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()


def errors(fn, q, k, v, grad):
    """Relative errors of fn's output and gradients against SDPA in float32 (graphs freed on return: an autograd
    graph kept alive across the capture below breaks it)."""
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qf, kf, vf)
    want = torch.autograd.grad(ref, (qf, kf, vf), grad.float())
    out = fn(q, k, v)
    got = torch.autograd.grad(out, (q, k, v), grad)
    return [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip([out, *got], [ref, *want])]


rows = []
for n in (64, 32):
    q, k, v = token_major(n), token_major(n), token_major(n)
    grad = torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    for warps in [None] + ARMS[n]:
        fn = F.scaled_dot_product_attention if warps is None else K.short_attention
        K.ATTENTION_WARPS = warps or K.ATTENTION_WARPS
        try:
            err = errors(fn, q, k, v, grad)
            fwd = timed(lambda: fn(q, k, v))
            both = timed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad))
        except Exception as e:  # one arm's failure leaves the others
            err, fwd, both = repr(e)[:200], None, None
        rows.append({"tokens": n, "arm": "sdpa" if warps is None else ",".join(map(str, warps)),
                     "fwd_ms": fwd and round(fwd, 4), "fwd_bwd_ms": both and round(both, 4), "rel_err": err})
        print(json.dumps(rows[-1]), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
