"""Which of SDPA's backends is fastest at the XL shapes (16 heads of 72, bf16)? cuDNN, FlashAttention-2 and the
memory-efficient kernel, each alone (torch.nn.attention.sdpa_kernel), q, k, v token-major as sprintc's q/k kernels
write them. Shapes: the training step's dense blocks (B 128, 256 tokens, forward + backward), the routed blocks (B 128,
64 tokens), and the CFG sampling step (B 256, 256 tokens, forward only). Prints ms per call (CUDA graph), the
relative error against float32 math, and the kernels each backend launches. On the device:
python3 scripts/gpu_sdpa_backends.py [OUT.json]
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from gpu_qk_kernels import timed

H, DH = 16, 72
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}
SHAPES = [("train dense", 128, 256, True), ("train routed", 128, 64, True), ("sample CFG", 256, 256, False)]


def token_major(b, n, grad):
    return torch.randn(b, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_(grad)


rows = []
torch.manual_seed(0)
for label, b, n, backward in SHAPES:
    q, k, v = (token_major(b, n, backward) for _ in range(3))
    g = torch.randn(b, n, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    with sdpa_kernel(SDPBackend.MATH):
        qf, kf, vf = (t.detach().float().requires_grad_(backward) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qf, kf, vf)
        ref_grads = torch.autograd.grad(ref, (qf, kf, vf), g.float()) if backward else ()
    for name, backend in BACKENDS.items():
        def step():
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v)
                if backward:
                    torch.autograd.grad(out, (q, k, v), g)

        try:
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v)
                grads = torch.autograd.grad(out, (q, k, v), g) if backward else ()
            err = [float((a.float() - r).norm() / r.norm()) for a, r in zip((out, *grads), (ref, *ref_grads))]
            ms = timed(step, reps=20)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            kernels = sorted({e.name[:80] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
            row = {"shape": label, "batch": b, "tokens": n, "backend": name, "ms": round(ms, 4),
                   "rel_err": [round(e, 5) for e in err], "kernels": kernels}
        except RuntimeError as e:
            row = {"shape": label, "batch": b, "tokens": n, "backend": name, "error": str(e).splitlines()[0][:200]}
        rows.append(row)
        print(json.dumps(row), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
