"""sprintc's tiled attention (sprintc/kernels.py, tiled_attention) against scaled_dot_product_attention (cuDNN) at the
XL shape of the dense blocks and of sampling (16 heads of 72, 256 tokens), bf16, q, k, v in token-major memory as
sprintc's q/k kernel writes them: ms per call of the forward at batch 128 and 256 (a CFG sampling step's rows) and of
forward + backward at 128 (CUDA graph, median of 5), for several TILED settings (block_m, block_n, forward warps,
backward warps, split), and the relative error of each output and gradient against SDPA in float32.
On the device: python3 scripts/gpu_tiled_attention.py [JSON]"""
import json
import sys

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from gpu_qk_kernels import timed

H, N, DH = 16, 256, 72
ARMS = [(64, 64, 4, 4, 1), (64, 64, 4, 4, 0), (128, 64, 8, 4, 1), (128, 64, 8, 8, 1), (64, 128, 4, 8, 1),
        (128, 128, 8, 8, 1), (64, 32, 4, 4, 1), (32, 64, 4, 4, 1)]


def token_major(b):
    return torch.randn(b, N, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()


def tiled(q, k, v):
    return K.tiled_attention(q, k, v)[0]


def errors(fn, q, k, v, grad):
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qf, kf, vf)
    want = torch.autograd.grad(ref, (qf, kf, vf), grad.float())
    out = fn(q, k, v)
    got = torch.autograd.grad(out, (q, k, v), grad)
    return [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip([out, *got], [ref, *want])]


rows = []
q, k, v = token_major(128), token_major(128), token_major(128)
q2, k2, v2 = (t.detach().repeat(2, 1, 1, 1) for t in (q, k, v))
grad = torch.randn(128, N, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
for arm in [None] + ARMS:
    fn = F.scaled_dot_product_attention if arm is None else tiled
    if arm:
        K.TILED = (N, *arm)
    try:
        err = errors(fn, q, k, v, grad)
        with torch.no_grad():
            fwd = timed(lambda: fn(q, k, v))
            fwd256 = timed(lambda: fn(q2, k2, v2))
        both = timed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad))
    except Exception as e:  # one arm's failure leaves the others
        err, fwd, fwd256, both = repr(e)[:300], None, None, None
    rows.append({"arm": "sdpa" if arm is None else ",".join(map(str, arm)), "fwd_ms": fwd and round(fwd, 4),
                 "fwd_b256_ms": fwd256 and round(fwd256, 4), "fwd_bwd_ms": both and round(both, 4), "rel_err": err})
    print(json.dumps(rows[-1]), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
