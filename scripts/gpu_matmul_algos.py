"""XL's matmuls timed alone: torch's cuBLAS call (as Inductor makes it), the same with cuBLASLt preferred, and each of
cuBLASLt's heuristic candidates (up to 32), bf16, for the forward, input-gradient and weight-gradient products of the
block's linears at the routed (B x 64 rows) and dense (B x 256) sizes. Prints one JSON row per shape and what the fastest
candidate would save per routed training step (24 blocks of 64 tokens, 4 of 256). Median of 5 groups of 10 launches.
    python3 scripts/gpu_matmul_algos.py [--batch 128,64] [--candidates 32] [--json FILE]"""
import argparse
import ctypes
import json
import statistics

import torch

from sprintc import cublaslt as lt

D = 1152
LINEARS = {"qkv": (D, 3 * D), "proj": (D, D), "fc1": (D, 4 * D), "fc2": (4 * D, D)}  # (in, out)
# products that already run in sprintc's own tuned cuBLASLt epilogues (sprintc/cublaslt.py)
TUNED = {("fc1", "fwd"), ("fc2", "dx")}


def ms(fn, groups=5, reps=10):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(groups):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        e.synchronize()
        out.append(s.elapsed_time(e) / reps)
    return statistics.median(out)


def operand(t: torch.Tensor):
    """(op, rows, cols, ld) of cuBLASLt's column-major operand that is t.T, for t contiguous or the .t() of a
    contiguous tensor."""
    r, c = t.shape
    if t.is_contiguous():  # memory = t.T column-major (c x r, ld c)
        return lt._OP_N, c, r, c
    assert t.t().is_contiguous()  # memory = t column-major (r x c, ld r); t.T by a transpose
    return lt._OP_T, r, c, r


def candidates(a: torch.Tensor, b: torch.Tensor, count: int):
    """Descriptors and heuristic candidates for out (m, n) = a (m, k) @ b (k, n), row-major: out.T = b.T @ a.T."""
    m, n = a.shape[0], b.shape[1]
    t = lt._CUDA_TYPE[a.dtype]
    desc = lt._create("cublasLtMatmulDescCreate", lt._COMPUTE_32F, lt._R_32F)
    (op_b, *lay_b), (op_a, *lay_a) = operand(b), operand(a)
    lt._set("cublasLtMatmulDescSetAttribute", desc, lt._TRANSA, ctypes.c_int(op_b))
    lt._set("cublasLtMatmulDescSetAttribute", desc, lt._TRANSB, ctypes.c_int(op_a))
    la = lt._create("cublasLtMatrixLayoutCreate", t, *lay_b)
    lb = lt._create("cublasLtMatrixLayoutCreate", t, *lay_a)
    ld = lt._create("cublasLtMatrixLayoutCreate", t, n, m, n)
    pref = lt._create("cublasLtMatmulPreferenceCreate")
    lt._set("cublasLtMatmulPreferenceSetAttribute", pref, lt._PREF_WORKSPACE, ctypes.c_uint64(lt.WORKSPACE_BYTES))
    found, got = (lt._Heuristic * count)(), ctypes.c_int(0)
    lt._check(lt._lib().cublasLtMatmulAlgoGetHeuristic(lt._handle(a.device.index), desc, la, lb, ld, ld, pref, count,
                                                        found, ctypes.byref(got)), "heuristic")
    return desc, la, lb, ld, list(found[:got.value])


def launcher(plan, a, b, out, i):
    desc, la, lb, ld, found = plan
    h = found[i]
    space = torch.empty(max(h.workspace, 1), device=a.device, dtype=torch.uint8)
    handle, stream = lt._handle(a.device.index), torch.cuda.current_stream().cuda_stream

    def run():
        lt._check(lt._lib().cublasLtMatmul(handle, desc, ctypes.byref(lt._ONE), b.data_ptr(), la, a.data_ptr(), lb,
                                           ctypes.byref(lt._ZERO), out.data_ptr(), ld, out.data_ptr(), ld,
                                           ctypes.byref(h.algo), space.data_ptr(), h.workspace, stream), "matmul")
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="128,64")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows, saved = [], {}
    for batch in map(int, args.batch.split(",")):
        for tokens, blocks in ((64, 24), (256, 4)):
            m = batch * tokens
            for name, (k, n) in LINEARS.items():
                x, w, gy, bias = torch.randn(m, k, **bf), torch.randn(n, k, **bf), torch.randn(m, n, **bf), torch.randn(n, **bf)
                for prod, a, b, extra in (("fwd", x, w.t(), bias), ("dx", gy, w, None), ("dw", gy.t(), x, None)):
                    ref = a @ b
                    r = dict(batch=batch, tokens=tokens, linear=name, product=prod, m=a.shape[0], n=b.shape[1],
                             k=a.shape[1], tuned_already=(name, prod) in TUNED)
                    r["torch_mm"] = ms(lambda: torch.mm(a, b))
                    if extra is not None:
                        r["torch_addmm"] = ms(lambda: torch.addmm(extra, a, b))
                    torch.backends.cuda.preferred_blas_library("cublaslt")
                    r["torch_mm_lt"] = ms(lambda: torch.mm(a, b))
                    torch.backends.cuda.preferred_blas_library("cublas")
                    plan = candidates(a, b, args.candidates)
                    out = torch.empty(a.shape[0], b.shape[1], **bf)
                    times = []
                    for i in range(len(plan[4])):
                        run = launcher(plan, a, b, out, i)
                        try:
                            run()
                        except lt.CublasLtError:
                            times.append(None)
                            continue
                        err = (out.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
                        times.append(ms(run) if err < 1e-2 else None)
                    ok = [t for t in times if t is not None]
                    r["candidates"] = len(times)
                    r["lt_first"] = times[0] if times else None
                    r["lt_best"] = min(ok) if ok else None
                    r["lt_best_index"] = times.index(r["lt_best"]) if ok else None
                    base = r.get("torch_addmm", r["torch_mm"])
                    if ok and not r["tuned_already"]:
                        saved[batch] = saved.get(batch, 0.0) + blocks * max(0.0, base - r["lt_best"])
                    r = {key: round(v, 4) if isinstance(v, float) else v for key, v in r.items()}
                    rows.append(r)
                    print(json.dumps(r), flush=True)
                    del out, plan
    summary = {f"saved_ms_per_routed_step_b{b}": round(v, 3) for b, v in saved.items()}
    print(json.dumps(summary))
    if args.json:
        json.dump({"rows": rows, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
