"""Does the layout of q, k, v change what scaled_dot_product_attention costs in a training step? At the XL
shapes of a batch-128 step (16 heads of 72, 256 tokens dense, 64 routed), bf16: forward + backward with q, k, v
head-major (B, H, N, Dh) contiguous, as Inductor writes them, against token-major (B, N, H, Dh) memory, as
sprintc's q/k kernels write them; the gradient of the output arrives token-major (proj's backward). Prints ms
per call (CUDA graph) and the kernels each variant launches. On the device: python3 scripts/gpu_sdpa_layout.py
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from gpu_qk_kernels import timed

B, H, DH = 128, 16, 72


def inputs(n, layout):
    def one():
        t = torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16)
        t = t.transpose(1, 2).contiguous() if layout == "head-major" else t.transpose(1, 2)
        return t.requires_grad_()
    return one(), one(), one()


rows = []
for n in (256, 64):
    grad = torch.randn(B, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # token-major, as proj sends it
    for layout in ("head-major", "token-major"):
        q, k, v = inputs(n, layout)

        def step():
            out = F.scaled_dot_product_attention(q, k, v)
            torch.autograd.grad(out, (q, k, v), grad)

        ms = timed(step)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        names = sorted({e.name[:90] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
        out = F.scaled_dot_product_attention(q, k, v)
        rows.append({"tokens": n, "layout": layout, "fwd_bwd_ms": round(ms, 4), "out_strides": out.stride(), "kernels": names})
        print(json.dumps(rows[-1]))
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
