"""Data-parallel scaling of a sprintc training step: run under torchrun, one process per GPU.

    torchrun --nproc_per_node 2 scripts/gpu_ddp.py specs/sit_xl_sprint.yaml --batch 128 --json out.json

Each rank builds the spec, lowers it (sprintc.targets_api.lower: regional Inductor compile, bf16
autocast), wraps it in DistributedDataParallel, and times the routed training step (forward, backward
with the gradient all-reduce, clipping folded into fused AdamW) at `--batch` images per GPU. Rank 0
writes {world, batch_per_gpu, ms, img_s (all GPUs), compile_s}. Scaling efficiency from 1 to W GPUs is
img_s(W) / (W * img_s(1)). On the CPU (--device cpu) it runs with gloo on a tiny spec (a check of the
script, not a figure).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, default=128, help="images per GPU")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--graph", choices=["routed", "dense"], default="routed")
    ap.add_argument("--target", default="inductor", choices=["eager", "inductor"])
    ap.add_argument("--mode", default=None, help="target.mode, e.g. reduce-overhead (CUDA graphs per compiled region)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--cuda-graph", action="store_true",
                    help="the step of `sprintc train` (train.StepRunner): 11 warm-up steps, then captured in a CUDA graph "
                         "with DDP's all-reduces inside, replayed")
    ap.add_argument("--json")
    a = ap.parse_args()

    from sprintc.bench import _data_for, _loss_fn, tiny_version
    from sprintc.compiler import compile_spec
    from sprintc.spec import load_spec
    from sprintc.objectives import Objective
    from sprintc.targets_api import clip_and_step, lower, resolve_target
    from sprintc.train import StepRunner, _enter_stage, draw_routing, set_lr

    cuda = a.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
    spec = load_spec(a.spec)
    if not cuda:
        spec = tiny_version(spec)
    torch.manual_seed(0)
    built = compile_spec(spec)
    with torch.no_grad():  # DiT zero-initialises adaLN and the head: give them values (as sprintc bench)
        for p in built.model.parameters():
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.02)
    model = lower(built.model, resolve_target(spec.target, name=a.target, mode=a.mode), device=dev)
    model.train()
    if getattr(model, "sprint", None) is not None:
        model.sprint.routing = a.graph == "routed"
    tr = spec.train
    graphs = a.cuda_graph and cuda
    side = torch.cuda.Stream(dev) if graphs else None
    # as `sprintc train` wraps it (train._enter_stage): bucket views, no buffer broadcast, built on the capture stream
    ddp = _enter_stage(model, None, None, world, dev, fsdp=False, stream=side)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(tr.betas), eps=tr.eps, weight_decay=tr.weight_decay,
                            **({"fused": True, "capturable": graphs} if cuda else {"foreach": True}))
    torch.manual_seed(1 + rank)
    if a.cuda_graph:  # the training step of `sprintc train`, on one fixed batch of this rank
        obj = Objective.from_spec(spec)
        x0, t, y, noise = _data_for(spec, a.batch, dev, seed=1 + rank)
        x_t, t_in = obj.noisy(x0, noise, t)
        route = draw_routing(getattr(model, "sprint", None), a.batch, dev, torch.Generator(dev).manual_seed(2 + rank))
        batch = {"x_t": x_t, "t_in": t_in, "x0": x0, "noise": noise, "t": t, **({} if y is None else {"y": y}), **route}
        autocast = nullcontext()  # `lower` already runs the forward under the target's autocast
        set_lr(opt, 1e-4, on_device=graphs)
        runner = StepRunner(ddp, opt, obj, model, tr.grad_clip, autocast, graphs, stream=side)

        def step():
            runner(batch)
        a.warmup = max(a.warmup, StepRunner.WARMUP_DDP + 1)  # the capture happens in the warm-up
    else:
        data = _data_for(spec, a.batch, dev, seed=1 + rank)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = _loss_fn(ddp, *data)
            loss.backward()
            clip_and_step(opt, model.parameters(), tr.grad_clip)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(a.warmup):
        step()
    sync()
    times = []
    for _ in range(a.steps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = torch.tensor([statistics.median(times)], device=dev)
    dist.all_reduce(ms, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    ms = float(ms)
    res = dict(world=world, batch_per_gpu=a.batch, graph=a.graph, target=a.target, cuda_graph=a.cuda_graph, mode=a.mode or spec.target.mode, ms=round(ms, 2),
               img_s=round(world * a.batch / ms * 1e3, 1), first_step_s=round(first, 2),
               compile_s=round(first - ms / 1e3, 2), spec=spec.name, torch=torch.__version__,
               device_name=torch.cuda.get_device_name(dev) if cuda else "cpu",
               peak_mem_gb=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if cuda else None)
    if rank == 0:
        print(json.dumps(res), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    if a.cuda_graph:
        runner.release()  # a live graph with NCCL calls in it would make destroy_process_group hang
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
