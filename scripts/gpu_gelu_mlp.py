"""The MLP's training step with cuBLASLt's GELU epilogues (sprintc/cublaslt.py) against Inductor's own GELU passes, on
one GPU. First the two ops against a float32 expression at XL's shapes; then a block's MLP sublayer (LayerNorm +
modulate, MLP, gate, residual; bf16 autocast over float32 weights) compiled with fullgraph, forward + backward, at the
routed (128 x 64 tokens) and dense (128 x 256) sizes of batch 128: arms alternating, median of 5 groups of 20 steps
timed with CUDA events, and the peak memory above the inputs. Arms: Inductor's passes, cuBLASLt's epilogues. The
steps are not captured in a CUDA graph, so at 8192 rows the Python calls of the cuBLASLt ops can leave the GPU waiting
(session R: this sublayer was slower with them, while the bench's captured step was 2.6% faster).
    python3 scripts/gpu_gelu_mlp.py [--json FILE]"""
import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpu_gelu_algos import ms  # (scripts/ is on the path when this runs as a script)
from sprintc import cublaslt
from sprintc.model import Mlp, modulate

D, HIDDEN = 1152, 4608


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def check_ops(rows, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=g) * scale)
    x, w1, b1, w2, b2 = r(rows, D), r(HIDDEN, D, scale=D ** -0.5), r(HIDDEN, scale=0.1), r(D, HIDDEN, scale=HIDDEN ** -0.5), r(D, scale=0.1)
    ps32 = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    ps = [t.to(dtype).requires_grad_() for t in (x, w1, b1, w2, b2)]
    gy = r(rows, D)
    want = F.linear(F.gelu(F.linear(ps32[0], ps32[1], ps32[2]), approximate="tanh"), ps32[3], ps32[4])
    want.backward(gy)
    got = cublaslt.gelu_mlp(*ps)
    got.backward(gy.to(dtype))
    a, h = cublaslt.linear_gelu_aux(*(t.detach() for t in ps[:3]))
    return {"rows": rows, "dtype": str(dtype), "out": rel(got, want),
            "pre_activation": rel(h, F.linear(x, w1, b1)),
            **{f"grad_{n}": rel(p.grad, q.grad) for n, p, q in zip(("x", "w1", "b1", "w2", "b2"), ps, ps32)},
            "fallbacks": dict(cublaslt.fallbacks)}


class Sublayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(D, 4.0)

    def forward(self, x, shift, scale, gate):
        return x + gate.unsqueeze(1) * self.mlp(modulate(self.norm(x), shift, scale))


def time_arm(fn, args):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(*args)
        out.float().square().mean().backward()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    return ms(step, groups=5, reps=20), (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    rows = []
    for n, dt in ((8192, torch.bfloat16), (32768, torch.bfloat16), (300, torch.bfloat16), (256, torch.float16)):
        rows.append(check_ops(n, dt))
        print(json.dumps(rows[-1]))
    arms = {}
    for arm in ("inductor", "cublaslt"):
        torch.manual_seed(0)
        layer = Sublayer().cuda()
        layer.mlp.gelu_train = arm == "cublaslt"
        arms[arm] = torch.compile(layer, fullgraph=True)

    for batch, tokens in ((128, 64), (128, 256)):
        x = torch.randn(batch, tokens, D, device="cuda", requires_grad=True)
        mods = [(torch.randn(batch, D, device="cuda", dtype=torch.bfloat16) * 0.1).requires_grad_() for _ in range(3)]
        for rnd in (1, 2):
            for arm, fn in arms.items():
                t, mib = time_arm(fn, (x, *mods))
                rows.append({"tokens": batch * tokens, "arm": arm, "round": rnd, "ms": round(t, 3), "peak_mib": round(mib)})
                print(json.dumps(rows[-1]))
    print("fallbacks", dict(cublaslt.fallbacks))
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
