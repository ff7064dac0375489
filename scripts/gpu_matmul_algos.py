"""XL's matmuls timed alone: torch's cuBLAS call (as Inductor makes it), the same with cuBLASLt preferred, and each of
cuBLASLt's heuristic candidates (sprintc/cublaslt.py's plans), bf16, for the forward, input-gradient and weight-gradient
products of the block's linears at the routed (B x 64 rows) and dense (B x 256) sizes. Prints one JSON row per shape and
what the fastest candidate would save per routed training step (24 blocks of 64 tokens, 4 of 256). Median of 5 groups
of 10 launches. (Session U's figures ran this at 3319c19, with its own copy of the plan code; the same measurement.)
`--candidates N` asks the heuristic for N candidates instead of sprintc's CANDIDATES; the rows then also give the best of
the first CANDIDATES (what sprintc picks from) as lt_best_shipped, and the summary what each would save (session AF).
    python3 scripts/gpu_matmul_algos.py [--batch 128,64] [--candidates N] [--json FILE]"""
import argparse
import json

import torch

from sprintc import cublaslt as lt

D = 1152
LINEARS = {"qkv": (D, 3 * D), "proj": (D, D), "fc1": (D, 4 * D), "fc2": (4 * D, D)}  # (in, out)
# products that already run in sprintc's own tuned cuBLASLt epilogues (sprintc/cublaslt.py)
TUNED = {("fc1", "fwd"), ("fc2", "dx")}


def ms(fn):
    return lt.time_ms(fn, reps=10, groups=5)


def candidate_times(a, b, ref):
    """ms of each of cuBLASLt's candidates for a @ b (None where refused or wrong), the heuristic's order."""
    out = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=a.dtype)
    plan = lt._plan(*lt._key(lt.DEFAULT, a, b, out))
    times = []
    for i in range(len(plan[4]) if plan else 0):
        run = lambda: lt._launch(plan, a.device, a, b, out, i)  # noqa: E731
        try:
            run()
        except lt.CublasLtError:
            times.append(None)
            continue
        err = (out.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
        times.append(ms(run) if err < 1e-2 else None)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="128,64")
    ap.add_argument("--candidates", type=int, default=lt.CANDIDATES)
    ap.add_argument("--json")
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    shipped, lt.CANDIDATES = lt.CANDIDATES, args.candidates
    bf = dict(device="cuda", dtype=torch.bfloat16)
    rows, saved, saved_shipped = [], {}, {}
    for batch in map(int, args.batch.split(",")):
        for tokens, blocks in ((64, 24), (256, 4)):
            m = batch * tokens
            for name, (k, n) in LINEARS.items():
                x, w = torch.randn(m, k, **bf), torch.randn(n, k, **bf)
                gy, bias = torch.randn(m, n, **bf), torch.randn(n, **bf)
                for prod, a, b, extra in (("fwd", x, w.t(), bias), ("dx", gy, w, None), ("dw", gy.t(), x, None)):
                    r = dict(batch=batch, tokens=tokens, linear=name, product=prod, m=a.shape[0], n=b.shape[1],
                             k=a.shape[1], tuned_already=(name, prod) in TUNED)
                    r["torch_mm"] = ms(lambda: torch.mm(a, b))
                    if extra is not None:
                        r["torch_addmm"] = ms(lambda: torch.addmm(extra, a, b))
                    torch.backends.cuda.preferred_blas_library("cublaslt")
                    r["torch_mm_lt"] = ms(lambda: torch.mm(a, b))
                    torch.backends.cuda.preferred_blas_library("cublas")
                    times = candidate_times(a, b, a @ b)
                    ok = [t for t in times if t is not None]
                    best = min(ok) if ok else None
                    first = [t for t in times[:shipped] if t is not None]
                    r.update(candidates=len(times), lt_first=times[0] if times else None, lt_best=best,
                             lt_best_index=times.index(best) if ok else None,
                             lt_best_shipped=min(first) if first else None)
                    base = r.get("torch_addmm", r["torch_mm"])
                    if ok and not r["tuned_already"]:
                        saved[batch] = saved.get(batch, 0.0) + blocks * max(0.0, base - r["lt_best"])
                    if first and not r["tuned_already"]:
                        saved_shipped[batch] = saved_shipped.get(batch, 0.0) + blocks * max(0.0, base - min(first))
                    r = {key: round(v, 4) if isinstance(v, float) else v for key, v in r.items()}
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    summary = {f"saved_ms_per_routed_step_b{b}": round(v, 3) for b, v in saved.items()}
    summary.update({f"saved_ms_per_routed_step_b{b}_first_{shipped}": round(v, 3) for b, v in saved_shipped.items()})
    print(json.dumps(summary))
    if args.json:
        json.dump({"rows": rows, "summary": summary}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
