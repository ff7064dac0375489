"""`sprintc train SPEC`: the stages of `spec.train` (routed pretraining, then full-token fine-tuning) on one
process or under torchrun (DDP, or FSDP2 with `train.distributed: fsdp`).

Order of setup (torchtitan's): build -> EMA copy -> lower (compile) -> DDP / fully_shard -> optimizer.
Every random draw of a step (which samples, noise, t, dropped labels, kept tokens, path drop) is made for
the whole global batch from generators the runtime owns, then sliced per rank: N ranks compute what one
process computes, and a resume replays the same stream.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
import signal
import sys
import time
import weakref
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from sprintc import checkpoint as ckpt
from sprintc.data import Stream, describe, load_data
from sprintc.errors import CheckpointError, SprintcError
from sprintc.targets_api import CaptureError, CudaGraphStep, clip_and_step, lower, resolve_device
from sprintc.objectives import Objective
from sprintc.optim import MasterAdamW, adamw_for, float32_params, float32_state_dict
from sprintc.routing import draw_path_drop, sample_ids
from sprintc.spec import dump_spec, load_spec

# peak dense bf16 tensor FLOP/s per GPU, for MFU (name substring -> FLOP/s)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


class DivergedError(SprintcError):
    """The loss became NaN or inf."""


# ------------------------------------------------------------------------------------------ CLI
def add_train_arguments(p):
    p.add_argument("spec", help="spec file or preset name (e.g. specs/digits_sprint.yaml)")
    p.add_argument("--out", help="run folder for checkpoints, metrics and samples (default: runs/<spec name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--steps", type=int, help="train until this total step (overrides the stages' sum)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default: the spec's target.device")
    p.add_argument("--model", metavar="PKG.MODULE:FACTORY", help="train your own model, transformed by sprintc")
    p.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")


def run_train(args) -> int:
    spec = load_spec(args.spec)
    if args.steps is not None and args.steps < 1:
        raise SprintcError(f"--steps: {args.steps} must be >= 1")
    model = None
    if args.model:
        model = ckpt.user_model(args.model, spec)
    out = Path(args.out or Path("runs") / spec.name)
    res = train(spec, out, resume=args.resume, model=model, max_steps=args.steps, device=args.device,
                model_ref=args.model, tensorboard=args.tensorboard, progress=not args.no_progress)
    if res["rank"] == 0:
        how = {"signal": "stopped by signal", "done": "done"}[res["stopped"]]
        print(f"sprintc train: {how} at step {res['step']} ({res['stage']}), loss {res['loss']:.4f}, "
              f"{res['images_per_s']:.1f} images/s, {res['wall_s']:.0f} s")
        if res["checkpoint"]:
            print(f"  checkpoint: {res['checkpoint']}")
        if res["samples"]:
            print(f"  samples:    {res['samples']}")
    return 0


# ------------------------------------------------------------------------------------------ helpers
def init_distributed(device: torch.device):
    """(rank, world, device, created) from torchrun's environment; one process: (0, 1, device, False)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, created


def stage_bounds(stages, max_steps=None) -> tuple[list[int], int]:
    """Start step of each stage and the total. --steps cuts the schedule or extends the last stage."""
    starts, s = [], 0
    for st in stages:
        starts.append(s)
        s += st.steps
    return starts, (s if max_steps is None else max_steps)


def stage_at(starts, step) -> int:
    return max(i for i, s in enumerate(starts) if s <= step)


def lr_at(stage, step_in_stage: int) -> float:
    if stage.warmup and step_in_stage < stage.warmup:
        return stage.lr * (step_in_stage + 1) / stage.warmup
    return stage.lr


def ema_decay(ema_spec, step: int) -> float:
    """step = optimizer steps taken before this update; the decay ramps linearly from 0 over `warmup`."""
    if ema_spec.warmup:
        return ema_spec.decay * min(1.0, step / ema_spec.warmup)
    return ema_spec.decay


def ema_due(ema_spec, done: int, end: int) -> float | None:
    """After `done` optimizer steps: the decay of the EMA update due now, or None. With `every` N the update comes
    every N steps (and at `end`, the schedule's last step) with the product of the decays of the steps since the
    last one, so that a stopped and resumed run updates at the same steps as an uninterrupted one."""
    n = ema_spec.every
    if done % n and done != end:
        return None
    last = (done - 1) // n * n  # the step of the last update: a multiple of N, or the end if a run goes past it
    if last < end < done:
        last = end
    return math.prod(ema_decay(ema_spec, s) for s in range(last, done))


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def update_ema(ema, net, decay: float, opt=None):
    e = [_local(p) for p in ema.parameters()]
    m = [_local(p.detach()) for p in float32_params(net, opt)]
    torch._foreach_lerp_(e, m, 1.0 - decay)


def set_lr(opt, lr: float, on_device: bool = False):
    """on_device: the lr lives in a device tensor (what a captured step reads); else a float."""
    for g in opt.param_groups:
        if not on_device:
            g["lr"] = lr
        elif isinstance(g["lr"], torch.Tensor) and g["lr"].device == g["params"][0].device:
            g["lr"].fill_(lr)
        else:
            g["lr"] = torch.tensor(lr, device=g["params"][0].device)


ROUTE_KEYS = ("ids_keep", "path_drop", "middle_rows")


def train_step(wrapped, opt, obj, params, clip: float, autocast, b: dict):
    """Forward, loss, backward, clipping and the optimizer step; no host sync (returns device tensors)."""
    with autocast:
        pred = wrapped(b["x_t"], b["t_in"], *((b["y"],) if "y" in b else ()), **{k: b[k] for k in ROUTE_KEYS if k in b})
    loss = obj.loss(pred, b["x0"], b["x_t"], b["noise"], b["t"]).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), clip_and_step(opt, params, clip)


CAPTURING = weakref.WeakSet()  # the StepRunners alive (one per stage; an exception's traceback may keep one)


class StepRunner:
    """Runs a stage's training steps. With `graphs` (CUDA, target.cuda_graphs; one GPU or DDP) through
    targets_api.CudaGraphStep: a few plain warm-up steps, then the step captured once and replayed with each
    step's batch; under DDP the graph holds the bucketed gradient all-reduces too, still overlapped with the
    backward. The learning rate lives in a device tensor the graph reads. If the capture fails (an op that
    syncs with the host, say), one process goes on without the graph; under DDP that is an error (the failed
    capture leaves DDP's reducer mid-iteration)."""

    WARMUP = 3
    WARMUP_DDP = 11  # PyTorch's CUDA-graph notes ask for 11: DDP rebuilds its buckets and samples timings early on

    def __init__(self, wrapped, opt, obj, net, clip, autocast, graphs: bool, log=None, stream=None):
        self.plain = partial(train_step, wrapped, opt, obj, list(net.parameters()), clip, autocast)
        self.ddp, self.log = isinstance(wrapped, DDP), log
        self.captured = (CudaGraphStep(self.plain, warmup=self.WARMUP_DDP if self.ddp else self.WARMUP, stream=stream,
                                       optimizer=opt) if graphs else None)
        CAPTURING.add(self)

    @property
    def graphs(self) -> bool:
        return self.captured is not None

    def release(self):
        """Free the captured graph; every one is released before destroy_process_group (see CudaGraphStep)."""
        if self.captured is not None:
            self.captured.release()

    def __call__(self, b: dict):
        if self.captured is None:
            return self.plain(b)
        try:
            return self.captured(b)
        except CaptureError as e:
            if self.ddp:
                raise SprintcError(f"{e}; set target.cuda_graphs: false in the spec to train without it") from None
            self.captured = None  # the loop sets a float lr from the next step on
            if self.log is not None:
                self.log.note(f"{e}; training without it (set target.cuda_graphs: false to skip the attempt)")
                self.log.event(event="cuda_graph_fallback", error=str(e))
            return self.plain(b)


def read_later(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """`t` on its way to pinned host memory, queued behind the work queued so far, and the event to wait on before
    reading it. Reading a GPU tensor itself (`.tolist()`) is a copy queued behind everything queued since, the next
    step included, so the GPU would run dry while the host prepares the step after (session Q: 0.9% of XL's images/s)."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


def draw_routing(sprint, batch: int, device, generator, rank: int = 0, world: int = 1) -> dict:
    """ids_keep, path_drop (and middle_rows) drawn for the global batch and sliced to `rank` of `world`: the draws
    `routed_forward` would make itself. Drawn globally, they are the same on any number of GPUs, except path drop's
    with skip_middle, which are drawn per rank's share (each skips the middle for the same count of samples)."""
    if sprint is None or not sprint.routing:
        return {}
    out = {}
    plan = sprint.plan
    if plan is not None and plan.keep < plan.routable:
        out["ids_keep"] = sample_ids(plan, batch, device, generator)
    if sprint.path_drop_p > 0:
        out["path_drop"], rows = draw_path_drop(sprint.path_drop_p, batch, sprint.path_drop_skip, device, generator,
                                                groups=world)
        if rows is not None:
            out["middle_rows"] = rows[rank]
    b = batch // world
    return {k: v if k == "middle_rows" else v[rank * b:(rank + 1) * b] for k, v in out.items()}


def forward_flops(ema, spec, routing: bool, device, batch: int = 1) -> float:
    """FLOPs of one image's forward in a stage (routed or dense), counted on the EMA copy (eager: counting on the
    compiled model would compile it again): on `batch` images (a rank's batch) where path drop skips the middle for
    some of them, since how many depends on it; on one image everywhere else (a dense stage's batch may be large)."""
    from sprintc.compiler import example_inputs
    from sprintc.graph import count_flops

    sprint = getattr(ema, "sprint", None)
    if sprint is not None:
        sprint.routing = routing
    if not (routing and sprint is not None and sprint.path_drop_skip and sprint.path_drop_p > 0):
        batch = 1
    x, t, y = example_inputs(spec, batch, device)
    kw = draw_routing(sprint, batch, device, torch.Generator(device).manual_seed(0))
    args = (x, t) if y is None else (x, t, y)
    ema.train()
    try:
        with torch.no_grad():
            return float(count_flops(ema, *args, **kw)) / batch
    finally:
        ema.eval()


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _lower(net, spec, device, fsdp=False, captured=False, master=False):
    """Compile the blocks in place (the spec's target). On the CPU the model trains in float32 whatever
    target.dtype says, except with `master` weights (bf16, one process: the step's CPU autocast). Under FSDP every
    block is a region of its own: its all-gather hooks run between blocks.
    Where the step is not `captured` in a CUDA graph (FSDP, target.cuda_graphs false) the matmuls stay torch's: a tuned
    one saves GPU time but costs host time at every call (docs/PERFORMANCE.md, session U), and there the host issues
    every kernel. The blocks' modulations are batched (target.batch_modulation) only with `master` weights, whose layout
    makes each table one product; elsewhere a table would be a matmul per block outside the regions, for nothing."""
    update = {} if device.type == "cuda" else {"dtype": "float32"}
    if fsdp:
        update["region_blocks"] = 1
    if fsdp or not master:  # (under FSDP a table would call the modulations outside the blocks' all-gather hooks)
        update["batch_modulation"] = False
    if not captured:
        update["tuned_matmuls"] = False
    return lower(net, spec.target.model_copy(update=update), device=device)


class Stop:
    """SIGTERM / SIGINT ask the loop to save a checkpoint and return at the end of the current step."""

    def __init__(self):
        self.requested, self.old = False, {}

    def __enter__(self):
        if sys.platform != "win32" and _main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------------ logging
class Logger:
    """Rank 0's outputs: metrics.jsonl, optional TensorBoard, and a rich progress bar (or plain lines)."""

    def __init__(self, out: Path, total: int, start: int, *, enabled: bool, tensorboard: bool, progress: bool):
        self.enabled, self.bar, self.tb = enabled, None, None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        self.metrics = open(out / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if progress and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task("train", total=total, completed=start, stage="", info="")
            self.bar.start()

    def step(self, step: int, stage: str, rec: dict | None):
        if not self.enabled:
            return
        if rec is not None:
            self.metrics.write(json.dumps(rec) + "\n")
            self.metrics.flush()
            if self.tb is not None:
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            info = "" if rec is None else f"loss {rec['loss']:.4f}  {rec['images_per_s']:.0f} img/s" + (
                f"  MFU {rec['mfu']:.1%}" if rec.get("mfu") is not None else "")
            self.bar.update(self.task, completed=step, stage=stage, **({"info": info} if info else {}))
        elif rec is not None:
            mfu = f"  MFU {rec['mfu']:.1%}" if rec.get("mfu") is not None else ""
            self.console.print(f"step {step} [{stage}] loss {rec['loss']:.4f} lr {rec['lr']:.2e} "
                               f"{rec['images_per_s']:.1f} img/s{mfu}", highlight=False, markup=False)

    def event(self, **rec):
        if self.enabled:
            self.metrics.write(json.dumps(rec) + "\n")
            self.metrics.flush()

    def note(self, text: str):
        if self.enabled:
            self.console.print(text, highlight=False, markup=False)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()
        self.metrics.close()


# ------------------------------------------------------------------------------------------ training
def train(spec, out_dir, *, resume: bool = False, model=None, max_steps: int | None = None, device=None,
          model_ref: str | None = None, tensorboard: bool = False, progress: bool = True) -> dict:
    """Train `spec` into `out_dir`. Returns a summary: step, stage, loss (last step's), losses (every step
    this call ran), images_per_s, wall_s, checkpoint, samples, stopped ('done' or 'signal'), rank."""
    spec = load_spec(spec)
    tr, out = spec.train, Path(out_dir)
    if max_steps is not None and max_steps < 1:
        raise SprintcError(f"max_steps: {max_steps} must be >= 1")
    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise SprintcError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    device = resolve_device(spec.target, device)
    rank, world, device, created_pg = init_distributed(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(threads))
    try:
        return _train(spec, tr, out, resume, model, max_steps, device, rank, world, model_ref, tensorboard, progress)
    except OSError as e:  # a full disk or a read-only folder while writing logs or samples
        raise SprintcError(f"{e.filename or out}: {e.strerror or e}; the checkpoints written so far are intact") from None
    finally:
        torch.set_num_threads(threads)
        if created_pg and dist.is_initialized():
            for runner in list(CAPTURING):
                runner.release()
            dist.destroy_process_group()


def cpu_threads(current: int) -> int:
    """Threads for CPU training: no more than the cores other processes leave idle. OpenMP threads that
    spin-wait on a busy machine run ~10x slower than one thread (measured on a loaded 2-core box).
    An explicit OMP_NUM_THREADS is respected."""
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return current
    idle = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    idle -= int(os.getloadavg()[0] + 0.5)
    return max(1, min(current, idle))


def _train(spec, tr, out, resume, model, max_steps, device, rank, world, model_ref, tensorboard, progress):
    t_start = time.perf_counter()
    stages = tr.stages
    for st in stages:
        if st.batch % world:
            raise SprintcError(f"train.stages[{st.name}].batch: {st.batch} is not divisible by the {world} processes; "
                               "each rank takes an equal slice of the global batch")
    if device.type == "cuda" and spec.target.dtype == "float16":
        raise SprintcError("target.dtype: float16 training needs loss scaling, which sprintc train does not do; use bfloat16 or float32")
    starts, total = stage_bounds(stages, max_steps)
    schedule_end = stage_bounds(stages)[1]  # not --steps: a run cut short and resumed updates its EMA as one run
    ckpt_root = out / "checkpoints"
    existing = ckpt.list_checkpoints(ckpt_root)
    if not resume and (existing or (out / "metrics.jsonl").exists()):
        raise SprintcError(f"{out}: already holds a run ({len(existing)} checkpoint(s), metrics.jsonl); "
                           "pass --resume to continue it, or --out to start a new one elsewhere")
    data = load_data(spec)
    if data.x.numel() * data.x.element_size() < 2**30:
        data = data.to(device)  # small data sets live on the device: no host copies per step

    # ---- model, EMA, resume state (all on the unwrapped model, before compile and sharding)
    torch.manual_seed(tr.seed)
    net = model if model is not None else _build(spec)
    net = net.to(device)
    net.train()
    sprint = getattr(net, "sprint", None)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    if getattr(ema, "sprint", None) is not None:
        ema.sprint.generator = None
    state, ck = None, None
    if resume and existing:
        ck = ckpt.load(existing[-1], map_location="cpu")
        diffs = ckpt.spec_differences(ck.spec, spec)
        if diffs:
            raise CheckpointError(f"{ck.path}: was trained with a different model or passes than {spec.name!r}: "
                                  + "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else ""))
        stored_ref = ck.state.get("model_ref")
        if (stored_ref or None) != (model_ref or None):
            raise CheckpointError(f"{ck.path}: was trained with --model {stored_ref or '(none: the spec model)'}, "
                                  f"not {model_ref or '(none)'}; resume with the same model")
        ckpt.check_state_dict(net, ck.model, ck.path / "model.safetensors")
        net.load_state_dict(ck.model)
        if ck.ema is not None:
            ckpt.check_state_dict(ema, ck.ema, ck.path / "ema.safetensors")
            ema.load_state_dict(ck.ema)
        state = ck.state
    gen = torch.Generator(device).manual_seed(tr.seed + 1)  # noise, t, label dropout
    if sprint is not None:
        sprint.generator = torch.Generator(device).manual_seed(tr.seed + 2)  # kept tokens, path drop
    fsdp = world > 1 and tr.distributed == "fsdp"

    # FLOPs per image for MFU, counted now on the plain EMA copy (once sharded, a forward outside training
    # would leave its root parameters gathered)
    peak = peak_flops(device)
    flops = ({(st.routing, st.batch): 3 * forward_flops(ema, spec, st.routing, device, st.batch // world)
              for st in stages} if peak else {})

    # ---- compile, then wrap, then the optimizer
    graphs = device.type == "cuda" and not fsdp and spec.target.cuda_graphs  # capture the step per stage
    # bf16 weights written by the optimizer from float32 masters: one process, bf16 autocast (sprintc/optim.py); on the
    # CPU too (its torch-op step), where a bf16 spec then trains under CPU autocast
    master = tr.master_weights and spec.target.dtype == "bfloat16" and world == 1
    net = _lower(net, spec, device, fsdp, captured=graphs, master=master)
    if fsdp:
        _shard(net, world, device)
        _shard(ema, world, device)
    opt = adamw_for(net, tr, stages[0].lr, device, master=master, capturable=graphs)
    fused_ema = isinstance(opt, MasterAdamW) and tr.ema.every == 1  # the EMA update in the optimizer's kernel, every step
    if fused_ema:
        opt.attach_ema(ema, net)
    step, cursor = 0, 0
    if state is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        try:
            set_optimizer_state_dict(net, opt, state["optimizer"], options=StateDictOptions(full_state_dict=fsdp))
        except Exception as e:
            raise CheckpointError(f"{ck.path}/state.pt: the optimizer state does not fit this model ({e})") from None
        step, cursor = int(state["step"]), int(state["cursor"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["noise"])
        if sprint is not None and rng.get("sprint") is not None:
            sprint.generator.set_state(rng["sprint"])

    obj = Objective.from_spec(spec)
    m = spec.model
    shape = (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    stream = Stream(len(data), tr.seed)
    # bf16 autocast on a GPU; on the CPU only with master weights (whose bf16 weights need it), else float32 there
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                if spec.target.dtype == "bfloat16" and (device.type == "cuda" or master) else nullcontext())
    spec_text = dump_spec(spec)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "spec.lock.yaml").exists():
            ckpt._write_bytes(out / "spec.lock.yaml", spec_text.encode())
    log = Logger(out, total, step, enabled=rank == 0, tensorboard=tensorboard, progress=progress)
    if rank == 0:
        log.note(f"sprintc train {spec.name}: {sum(p.numel() for p in ema.parameters()) / 1e6:.2f}M parameters, "
                 f"{describe(data)}, device {device}"
                 + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
                 + f", {world} process(es), steps {step}->{total}"
                 + (f", resumed from {ck.path}" if ck else ""))
        log.event(event="resume" if ck else "start", step=step, world=world, device=str(device))
        if tr.moments_dtype != "float32" and not isinstance(opt, MasterAdamW):
            log.note(f"train.moments_dtype: {tr.moments_dtype} applies with master weights only (train.master_weights, "
                     f"target.dtype bfloat16, one process); this run keeps AdamW's moments in float32")
            log.event(event="moments_dtype", asked=tr.moments_dtype, used="float32")

    losses, saved, samples_path = [], None, None
    wrapped, cur, runner = net, -1, None
    window = [0.0, 0, 0, time.perf_counter()]  # loss sum, steps, images, start time of the log window
    img_total, t_loop = 0, time.perf_counter()
    loss_v, stopped, stop_all = float("nan"), "done", False
    pending = []  # (step, [loss, stop] on its way to the host) not read yet: reading waits for the GPU, so it lags a step

    def settle(upto: int):
        """Read the losses of the steps <= upto; a NaN/inf stops training with the step it happened at."""
        nonlocal loss_v, stop_all
        while pending and pending[0][0] <= upto:
            s, (flags, copied) = pending.pop(0)
            if copied is not None:
                copied.synchronize()
            loss_v, flag = flags.tolist()
            loss_v /= world
            if not math.isfinite(loss_v):
                last = ckpt.list_checkpoints(ckpt_root)
                raise DivergedError(f"step {s} ({stages[stage_at(starts, s - 1)].name}): the loss is {loss_v}; training stopped. "
                                    + (f"The last good checkpoint is {last[-1]}; resume from it with --resume "
                                       "(perhaps with a lower lr or more warm-up)" if last else "No checkpoint was written yet")
                                    + ".")
            losses.append(loss_v)
            window[0] += loss_v
            window[1] += 1
            stop_all = stop_all or flag > 0

    try:
        with Stop() as stop:
            while step < total:
                si = stage_at(starts, step)
                stage = stages[si]
                if si != cur:  # a new stage: routing on/off, re-wrap once (never per step)
                    cur = si
                    side = torch.cuda.Stream(device) if graphs else None
                    wrapped = _enter_stage(net, sprint, stage, world, device, fsdp, side)
                    runner = StepRunner(wrapped, opt, obj, net, tr.grad_clip, autocast, graphs, log if rank == 0 else None, side)
                    log.event(event="stage", step=step, stage=stage.name, routing=stage.routing, batch=stage.batch, lr=stage.lr)
                set_lr(opt, lr_at(stage, step - starts[si]), on_device=runner.graphs)
                B, b = stage.batch, stage.batch // world
                sl = slice(rank * b, (rank + 1) * b)
                # the global batch's draws, sliced to this rank
                idx = stream.take(cursor, B)[sl]
                noise = torch.randn((B, *shape), generator=gen, device=device)[sl]
                t = obj.time(B, gen, device)[sl]
                drop = (torch.rand(B, generator=gen, device=device) < m.class_dropout)[sl]
                route = draw_routing(sprint, B, device, sprint.generator if sprint is not None else None, rank, world)
                x0, y = data.batch(idx, device)
                y = torch.where(drop, torch.full_like(y, m.num_classes), y) if m.num_classes else None
                x_t, t_in = obj.noisy(x0, noise, t)
                batch = {"x_t": x_t, "t_in": t_in, "x0": x0, "noise": noise, "t": t, **({} if y is None else {"y": y}), **route}
                if fused_ema:
                    opt.ema_weight.fill_(1.0 - ema_due(tr.ema, step + 1, schedule_end))
                loss, gnorm = runner(batch)
                loss = loss.float()
                flags = torch.stack([loss, torch.full_like(loss, float(stop.requested))])
                if world > 1:
                    dist.all_reduce(flags)
                decay = None if fused_ema else ema_due(tr.ema, step + 1, schedule_end)
                if decay is not None:
                    update_ema(ema, net, decay, opt)
                step += 1
                cursor += B
                img_total += B
                window[2] += B
                pending.append((step, read_later(flags)))
                log_now = step % tr.log_every == 0 or step == total
                save_now = step % tr.checkpoint_every == 0 and step < total
                sample_now = tr.sample_every and step % tr.sample_every == 0 and step < total
                settle(step if (log_now or save_now or sample_now) else step - 1)
                rec = None
                if log_now:
                    now = time.perf_counter()
                    ips = window[2] / max(now - window[3], 1e-9)
                    gn = float(_local(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)) if gnorm is not None else None
                    rec = {"step": step, "stage": stage.name, "loss": window[0] / window[1], "loss_last": loss_v,
                           "lr": float(opt.param_groups[0]["lr"]), "grad_norm": gn, "images_per_s": ips, "time": round(now - t_start, 3),
                           "mfu": ips * flops[stage.routing, stage.batch] / (peak * world) if flops else None}
                    window[:] = [0.0, 0, 0, now]
                log.step(step, stage.name, rec)
                if stop_all:
                    stopped = "signal"
                    break
                if save_now:
                    saved = _save(ckpt_root, step, si, cursor, net, ema, opt, gen, sprint, spec_text, tr, rank, world,
                                  fsdp, model_ref) or saved
                if sample_now:
                    samples_path = _samples(ema, spec, out / "samples" / f"step_{step:06d}.png", rank, fsdp, log) or samples_path
            settle(step)
        saved = _save(ckpt_root, step, stage_at(starts, max(step - 1, 0)), cursor, net, ema, opt, gen, sprint,
                      spec_text, tr, rank, world, fsdp, model_ref) or saved
        if stopped == "done":
            samples_path = _samples(ema, spec, out / "samples" / "final.png", rank, fsdp, log) or samples_path
        wall = time.perf_counter() - t_start
        ips = img_total / max(time.perf_counter() - t_loop, 1e-9)
        log.event(event="end", step=step, stopped=stopped, wall_s=round(wall, 3), images_per_s=ips)
    finally:
        log.close()
        if isinstance(opt, MasterAdamW):
            opt.restore()  # the caller's model gets its float32 parameters back
    return {"step": step, "stage": stages[stage_at(starts, max(step - 1, 0))].name, "loss": loss_v, "losses": losses,
            "images_per_s": ips, "wall_s": wall, "checkpoint": str(saved) if saved else None,
            "samples": str(samples_path) if samples_path else None, "stopped": stopped, "rank": rank}


def _build(spec):
    from sprintc.compiler import build

    return build(spec)


def _shard(net, world, device):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (world,))
    for blk in getattr(net, "blocks", []):
        fully_shard(blk, mesh=mesh)
    fully_shard(net, mesh=mesh)
    if hasattr(net, "forward_guidance"):  # the PDG graph reads the root's parameters too: gather them first
        register_fsdp_forward_method(net, "forward_guidance")


def _enter_stage(net, sprint, stage, world, device, fsdp, stream=None):
    """Routing on or off for the stage. The mask token only receives gradients while routing, so it is
    frozen in full-token stages (DDP must not wait for its gradient; AdamW leaves it as it is)."""
    if sprint is not None:
        sprint.routing = stage.routing
        sprint.mask_token.requires_grad_(stage.routing)
    if world == 1 or fsdp:
        return net
    # gradients as views of the all-reduce buckets: no copy in and out of them (as scripts/gpu_ddp.py measures);
    # no buffer broadcast before each forward: a model's buffers (RoPE angles, fixed position tables) are
    # constants, the same on every rank
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})  # the name torch < 2.14 knows
    wrap = partial(DDP, net, device_ids=[device.index] if device.type == "cuda" else None,
                   gradient_as_bucket_view=True, **no_sync)
    if stream is None:
        return wrap()
    # a DDP step can be captured only if DDP was built off the default stream (PyTorch's CUDA-graph notes);
    # built on the stream the step is then captured on
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        ddp = wrap()
    torch.cuda.current_stream(device).wait_stream(stream)
    return ddp


def _full_state(net, ema, opt, fsdp):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True) if fsdp else StateDictOptions()
    model_sd = float32_state_dict(net, opt, get_model_state_dict(net, options=opts))
    ema_sd = get_model_state_dict(ema, options=opts)
    opt_sd = get_optimizer_state_dict(net, opt, options=opts)
    return model_sd, ema_sd, opt_sd


def _save(root, step, si, cursor, net, ema, opt, gen, sprint, spec_text, tr, rank, world, fsdp, model_ref):
    """Rank 0 writes; every rank learns whether it worked (a full disk stops all of them)."""
    model_sd, ema_sd, opt_sd = _full_state(net, ema, opt, fsdp)
    err, path = None, None
    if rank == 0:
        state = {"step": step, "stage": si, "cursor": cursor, "optimizer": opt_sd, "world_size": world,
                 "model_ref": model_ref,
                 "rng": {"torch": torch.get_rng_state(), "noise": gen.get_state(),
                         "sprint": sprint.generator.get_state() if sprint is not None else None}}
        try:
            path = ckpt.save(root, step, model=model_sd, ema=ema_sd, state=state, spec_text=spec_text,
                             keep=tr.keep_checkpoints, model_ref=model_ref)
        except CheckpointError as e:
            err = str(e)
    if world > 1:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err:
        raise CheckpointError(err)
    return path


def _samples(ema, spec, path: Path, rank: int, fsdp: bool, log) -> Path | None:
    """A grid of EMA samples with the spec's sampler and guidance: a row per class (pixel data only)."""
    m = spec.model
    if m.input.channels not in (1, 3) or m.input.frames or spec.train.data.kind == "latents":
        if rank == 0:
            log.note(f"samples: skipped (the model makes {m.input.channels}-channel latents, which need a decoder)")
        return None
    if rank != 0 and not fsdp:
        return None
    from sprintc.diffusion import sample
    from sprintc.images import save_grid

    n = min(m.num_classes, 10) if m.num_classes else 8
    labels = torch.arange(2 * n) % n if m.num_classes else None
    device = next(ema.parameters()).device
    g = torch.Generator(device).manual_seed(spec.train.seed + 3)  # the same noise at every step: comparable grids
    noise = None if m.num_classes else torch.randn((2 * n, m.input.channels, m.input.size, m.input.size), generator=g, device=device)
    try:
        images = sample(ema, spec, labels, generator=g, noise=noise)
    finally:
        if fsdp:  # FSDP2 keeps the root's parameters gathered after a forward: back to shards for update_ema
            ema.reshard()
    if rank != 0:
        return None
    return save_grid(images, path, nrow=n, scale=max(1, 64 // m.input.size))
