"""sprintc's tiled attention (sprintc/kernels.py, tiled_attention) against scaled_dot_product_attention (cuDNN) at the
XL shape of the dense blocks and of sampling (16 heads of 72, 256 tokens), bf16, q, k, v in token-major memory as
sprintc's q/k kernel writes them: ms per call of the forward at batch 128 and 256 (a CFG sampling step's rows) and of
forward + backward at 128 (CUDA graph, median of 5), for several TILED settings (block_m, block_n, forward warps,
backward warps, split), the relative error of each output and gradient against SDPA in float32, and whether the op
compiles and runs inside torch.compile (forward and backward, against eager; the fastest setting). Each setting runs in
its own process (a kernel's illegal address would end the CUDA context of the rest), with its traceback on failure.
On the device: python3 scripts/gpu_tiled_attention.py [JSON]"""
import json
import os
import subprocess
import sys
import traceback

H, N, DH = 16, 256, 72
ARMS = [(64, 64, 4, 4, 0), (64, 64, 4, 4, 32), (64, 64, 4, 4, 16), (64, 64, 8, 8, 32), (128, 64, 8, 4, 0),
        (128, 64, 8, 8, 32), (64, 128, 4, 8, 0), (128, 128, 8, 8, 0), (32, 64, 4, 4, 32)]


def one(arm, compile_too):
    import torch
    import torch.nn.functional as F

    import sprintc.kernels as K
    from gpu_qk_kernels import timed

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
        torch.cuda.synchronize()
        return [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip([out, *got], [ref, *want])]

    row = {"arm": "sdpa" if arm is None else ",".join(map(str, arm))}
    fn = F.scaled_dot_product_attention if arm is None else tiled
    if arm:
        K.TILED = (N, *arm)
    torch.manual_seed(0)
    q, k, v = token_major(128), token_major(128), token_major(128)
    q2, k2, v2 = (t.detach().repeat(2, 1, 1, 1) for t in (q, k, v))
    grad = torch.randn(128, N, H, DH, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    row["rel_err"] = errors(fn, q, k, v, grad)
    with torch.no_grad():
        row["fwd_ms"] = round(timed(lambda: fn(q, k, v)), 4)
        row["fwd_b256_ms"] = round(timed(lambda: fn(q2, k2, v2)), 4)
    row["fwd_bwd_ms"] = round(timed(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad)), 4)
    if arm and compile_too:  # inside torch.compile (Inductor's own launch of the kernels), against eager
        compiled = torch.compile(lambda q, k, v: (tiled(q, k, v) * 2).sum(-1), fullgraph=True)
        small = [t.detach()[:4].clone().requires_grad_() for t in (q, k, v)]
        out = compiled(*small)
        got = torch.autograd.grad(out.float().square().sum(), small)
        ref = (tiled(*small) * 2).sum(-1)
        want = torch.autograd.grad(ref.float().square().sum(), small)
        row["compiled_rel_err"] = [round(((a.float() - b.float()).norm() / b.float().norm()).item(), 5)
                                   for a, b in zip([out, *got], [ref, *want])]
    return row


def run(arm, compile_too=False):
    """One setting in its own process: its row, or its error and traceback."""
    done = subprocess.run([sys.executable, __file__, "--compile" if compile_too else "--arm", arm], capture_output=True,
                          text=True, env={**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"})
    found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    row = json.loads(found[0]) if found else {"arm": arm, "error": (done.stdout + done.stderr)[-3000:]}
    row["rc"] = done.returncode
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] in ("--arm", "--compile"):
    arm = None if sys.argv[2] == "sdpa" else tuple(int(x) for x in sys.argv[2].split(","))
    try:
        print("ROW " + json.dumps(one(arm, sys.argv[1] == "--compile")), flush=True)
    except Exception:
        print("ROW " + json.dumps({"arm": sys.argv[2], "error": traceback.format_exc()[-3000:]}), flush=True)
elif __name__ == "__main__":
    rows = [run(arm) for arm in ["sdpa"] + [",".join(map(str, a)) for a in ARMS]]
    timed_ok = [r for r in rows[1:] if r.get("fwd_bwd_ms")]
    if timed_ok:  # the fastest setting (forward + backward) once more, also inside torch.compile
        rows.append(run(min(timed_ok, key=lambda r: r["fwd_bwd_ms"])["arm"], compile_too=True))
    if len(sys.argv) > 1:
        json.dump(rows, open(sys.argv[1], "w"), indent=1)
