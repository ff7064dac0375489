import json
import math
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, tiny_spec
from sprintc import checkpoint as ckpt
from sprintc.cli import main
from sprintc.compiler import build
from sprintc.errors import CheckpointError, SprintcError
from sprintc.objectives import Objective, ddpm_betas
from sprintc.pipeline import routed_forward
from sprintc.spec import load_spec
from sprintc.train import DivergedError, ema_decay, ema_due, forward_flops, lr_at, train


def spec(stages=((3, 8, True), (2, 4, False)), **train_over):
    """Digits at 8x8x1 on the tiny SPRINT model: a routed stage then a full-token one."""
    tr = {"stages": [{"name": f"s{i}", "steps": n, "batch": b, "routing": r, "lr": 1e-3 / (i + 1), "warmup": i}
                     for i, (n, b, r) in enumerate(stages)],
          "log_every": 1, "checkpoint_every": 2, "ema": {"decay": 0.9, "warmup": 2}}
    tr.update(train_over)
    return tiny_spec(name="t", model__input={"channels": 1, "size": 8}, train=tr,
                     sample={"sampler": "euler", "steps": 2, "guidance": "pdg", "scale": 2.0})


def quiet(**kw):
    return dict(device="cpu", progress=False, **kw)


# ------------------------------------------------------------------------------------ objectives
def test_flow_path_and_target():
    obj = Objective("flow", "uniform")
    x0, eps, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0.0, 0.5, 1.0])
    x_t, t_in = obj.noisy(x0, eps, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], eps[2]) and torch.allclose(x_t[1], (x0[1] + eps[1]) / 2)
    assert t_in is t  # flow time goes to the model as is
    assert torch.allclose(obj.loss(eps - x0, x0, x_t, eps, t), torch.zeros(3))
    assert torch.allclose(obj.loss(eps - x0 + 1, x0, x_t, eps, t), torch.ones(3))
    # learn_sigma: SiT ignores the second half of the channels
    assert torch.allclose(obj.loss(torch.cat([eps - x0, torch.randn_like(x0)], 1), x0, x_t, eps, t), torch.zeros(3))


def test_lognormal_time():
    t = Objective("flow", "lognormal").time(20000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    # t = sigmoid(N(0, 1)): median 1/2, P(t < sigmoid(1)) = Phi(1)
    assert abs(t.median().item() - 0.5) < 0.01
    assert abs((t < 1 / (1 + math.exp(-1))).float().mean().item() - 0.8413) < 0.01


def test_ddpm_schedule_matches_the_sampler():
    b = ddpm_betas()
    assert b.dtype == torch.float64 and torch.equal(b, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    diffusion = pytest.importorskip("sprintc.diffusion")
    assert torch.equal(b, diffusion.ddpm_betas())
    obj = Objective("ddpm")
    t = obj.time(500, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and 0 <= t.min() and t.max() <= 999
    x0, eps = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    x_t, t_in = obj.noisy(x0, eps, torch.tensor([0, 999]))
    abar = torch.cumprod(1 - b, 0)
    assert t_in.dtype == torch.float32 and t_in.tolist() == [0.0, 999.0]
    assert torch.allclose(x_t[1], (abar[999].sqrt() * x0[1] + (1 - abar[999]).sqrt() * eps[1]).float())


def test_ddpm_hybrid_loss_vb_trains_only_the_variance():
    obj = Objective("ddpm", learn_sigma=True)
    s = obj.schedule
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0, 1, 500, 999])
    x_t, _ = obj.noisy(x0, eps, t)
    # the true eps and the posterior variance (var value -1 picks the posterior log-variance): KL = 0 for t > 0
    out = torch.cat([eps, -torch.ones_like(eps)], 1)
    vb = obj.vb(eps, -torch.ones_like(eps), x0, x_t, t)
    assert torch.allclose(vb[1:], torch.zeros(3), atol=1e-4)
    assert vb[0] > 0  # t = 0: the decoder's negative log-likelihood in bits
    out = out.clone().requires_grad_(True)
    loss = obj.loss(out, x0, x_t, eps, t)
    assert torch.allclose(loss, vb, atol=1e-4)  # mse is 0 here
    # the vb term must not move the mean: gradient only through the mse on the eps half
    out2 = torch.cat([eps + 0.1, torch.zeros_like(eps)], 1).requires_grad_(True)
    obj.vb(out2[:, :2].detach(), out2[:, 2:], x0, x_t, t).sum().backward()
    assert out2.grad[:, :2].abs().sum() == 0 and out2.grad[:, 2:].abs().sum() > 0
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_schedules():
    st = load_spec(spec()).train.stages[1]  # lr 5e-4, warmup 1
    assert lr_at(st, 0) == pytest.approx(5e-4) and lr_at(st, 5) == pytest.approx(5e-4)
    st2 = st.model_copy(update={"warmup": 4})
    assert [lr_at(st2, i) for i in range(5)] == pytest.approx([1.25e-4, 2.5e-4, 3.75e-4, 5e-4, 5e-4])
    e = load_spec(spec()).train.ema  # decay 0.9, warmup 2
    assert [ema_decay(e, s) for s in range(4)] == pytest.approx([0.0, 0.45, 0.9, 0.9])
    assert [ema_due(e, s + 1, 100) for s in range(4)] == [ema_decay(e, s) for s in range(4)]  # every step


@pytest.mark.parametrize("every, end, steps", [(3, 8, 8), (3, 8, 13), (4, 8, 8), (5, 5, 12), (1, 6, 6)])
def test_an_ema_updated_every_n_steps_takes_each_step_s_decay_once(every, end, steps):
    """With ema.every N the updates come at multiples of N and at the schedule's end; together they take the
    decay of every step once (a double-counted or missing step changes the product), and none comes between."""
    e = load_spec(spec(ema={"decay": 0.9, "warmup": 50, "every": every})).train.ema  # a distinct decay each step
    due = {d: ema_due(e, d, end) for d in range(1, steps + 1)}
    at = [d for d, v in due.items() if v is not None]
    assert at == sorted({d for d in range(1, steps + 1) if d % every == 0 or d == end})
    assert due[at[0]] == 0.0  # the first update holds step 0, whose decay is 0 (the EMA starts as the weights)
    assert math.prod(due[d] for d in at[1:]) == pytest.approx(math.prod(ema_decay(e, s) for s in range(at[0], at[-1])))


def test_forward_flops_of_a_stage():
    """MFU's numerator (used on CUDA): the routed forward costs less than the dense one; the EMA stays in eval."""
    s = load_spec(spec())
    ema = build(s).eval()
    routed, dense = forward_flops(ema, s, True, torch.device("cpu")), forward_flops(ema, s, False, torch.device("cpu"))
    assert 0 < routed < dense and not ema.training
    # at a batch of 20, path drop 0.1 skips the middle for 2 samples: less per image; the dense stage is not re-counted
    cpu = torch.device("cpu")
    assert forward_flops(ema, s, True, cpu, 20) < routed and forward_flops(ema, s, False, cpu, 20) == dense


# ------------------------------------------------------------------------------------ training
def test_an_ema_updated_every_n_steps_resumes_exactly_and_differs_from_every_step(tmp_path):
    s = spec(stages=((4, 8, True), (3, 4, False)), ema={"decay": 0.9, "warmup": 0, "every": 3})
    full = train(s, tmp_path / "a", **quiet())
    train(s, tmp_path / "b", **quiet(max_steps=4))  # stops between the updates at steps 3 and 6
    train(s, tmp_path / "b", **quiet(resume=True))
    every_step = train(spec(stages=((4, 8, True), (3, 4, False)), ema={"decay": 0.9, "warmup": 0}), tmp_path / "c", **quiet())
    a, b, c = (ckpt.load(tmp_path / r) for r in "abc")
    assert full["losses"] == every_step["losses"]  # the EMA does not feed back into training
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    assert any(not torch.equal(a.ema[k], c.ema[k]) for k in a.ema)
    assert all(torch.equal(a.model[k], c.model[k]) for k in a.model)


def test_resume_continues_exactly_across_a_stage_switch(tmp_path):
    s = spec()
    full = train(s, tmp_path / "a", **quiet())
    assert full["step"] == 5 and full["stopped"] == "done" and len(full["losses"]) == 5
    first = train(s, tmp_path / "b", **quiet(max_steps=4))  # stops inside the second stage
    assert first["step"] == 4 and first["losses"] == full["losses"][:4]
    rest = train(s, tmp_path / "b", **quiet(resume=True))
    assert rest["losses"] == full["losses"][4:]  # bit-exact
    a, b = ckpt.load(tmp_path / "a"), ckpt.load(tmp_path / "b")
    assert a.step == b.step == 5
    for k in a.ema:
        assert torch.equal(a.ema[k], b.ema[k]) and torch.equal(a.model[k], b.model[k])
    # the optimizer state survived the stage switch: every parameter has been stepped 5 times, except the
    # mask token, which is frozen in the full-token stage (3 routed steps)
    st = a.state["optimizer"]["state"]
    assert st["sprint.mask_token"]["step"] == 3 and st["blocks.0.attn.qkv.weight"]["step"] == 5
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "a" / "checkpoints")] == ["step_000002", "step_000004", "step_000005"]
    recs = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["event"] for r in recs if "event" in r] == ["start", "stage", "stage", "end", "resume", "stage", "end"]


@pytest.mark.slow
def test_a_run_compiled_in_regions_of_blocks_trains_as_eager_across_a_stage_switch(tmp_path, monkeypatch):
    """The inductor target (blocks in pairs, the routing glue with the fusion) through `train`: a routed stage, then a
    full-token one whose pair compiles at the new token count; the losses are the eager run's."""
    import sprintc.train as train_module

    monkeypatch.setattr(train_module, "_samples", lambda *a, **k: None)  # the losses only: no sampling graphs to compile
    runs = {}
    for name in ("eager", "inductor"):
        s = spec(stages=((3, 8, True), (2, 4, False)), checkpoint_every=10)  # 1 dense, a pair of routed, 1 dense block
        s["target"] = {"name": name, "dtype": "float32", "region_blocks": 2}
        runs[name] = train(s, tmp_path / name, **quiet())["losses"]
    assert len(runs["eager"]) == 5
    torch.testing.assert_close(runs["inductor"], runs["eager"], rtol=1e-4, atol=1e-5)


def recorder(net, calls, nan_at=None):
    """Wrap the model's forward to record what the runtime passes (and poison step `nan_at`)."""
    def forward(self, x, t, y=None, ids_keep=None, path_drop=None):
        if self.training:
            calls.append({"y": y.clone(), "ids": ids_keep, "drop": path_drop, "batch": x.shape[0]})
        out = routed_forward(self, x, t, y, ids_keep=ids_keep, path_drop=path_drop)
        return out * float("nan") if self.training and len(calls) == nan_at else out
    net.__dict__["forward"] = types.MethodType(forward, net)
    return net


def test_stages_routing_label_dropout_and_grid(tmp_path):
    s = load_spec(spec(), model__class_dropout=1.0)
    calls = []
    net = recorder(build(s), calls)
    res = train(s, tmp_path, **quiet(model=net))
    assert [c["batch"] for c in calls] == [8, 8, 8, 4, 4]
    assert all(c["ids"] is not None and c["ids"].shape == (8, 4) and c["drop"].shape == (8,) for c in calls[:3])
    assert all(c["ids"] is None and c["drop"] is None for c in calls[3:])  # full-token fine-tuning
    assert net.sprint.routing is False
    assert all((c["y"] == 10).all() for c in calls)  # class_dropout 1: every label is the null class
    png = Image.open(res["samples"])
    assert res["samples"].endswith("samples/final.png") and png.size[0] > 64  # a row of 10 classes, enlarged


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    s = spec()
    net = recorder(build(s), [], nan_at=3)
    with pytest.raises(DivergedError, match=r"step 3 \(s0\): the loss is nan.*last good checkpoint is .*step_000002"):
        train(s, tmp_path, **quiet(model=net))
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_000002"]
    assert ckpt.load(tmp_path).step == 2


def test_full_disk_during_training(tmp_path, monkeypatch):
    import errno

    real = ckpt._write_bytes

    def full(path, data):
        if path.parent.name.startswith(".tmp-"):  # checkpoint files only
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes", full)
    with pytest.raises(CheckpointError, match=r"step_000002: cannot write the checkpoint \(the disk is full\)"):
        train(spec(), tmp_path, **quiet())
    assert list((tmp_path / "checkpoints").iterdir()) == []
    monkeypatch.setattr(ckpt, "_write_bytes", lambda path, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", str(path))))
    with pytest.raises(SprintcError, match=r"spec.lock.yaml: No space left on device"):
        train(spec(), tmp_path / "other", **quiet())


def test_out_dir_and_resume_guards(tmp_path):
    s = spec(stages=((2, 4, True),))
    train(s, tmp_path, **quiet())
    with pytest.raises(SprintcError, match=r"already holds a run .*--resume"):
        train(s, tmp_path, **quiet())
    with pytest.raises(CheckpointError, match=r"different model or passes .*model.depth: 4 -> 3"):
        train(load_spec(s, model__depth=3), tmp_path, **quiet(resume=True))
    from sprintc.train import _train

    with pytest.raises(SprintcError, match=r"batch: 4 is not divisible by the 3 processes"):
        _train(load_spec(s), load_spec(s).train, tmp_path / "x", False, None, None, torch.device("cpu"), 0, 3, None, False, False)


def test_ddpm_learn_sigma_trains(tmp_path):
    s = load_spec(spec(stages=((3, 4, False),)), model__learn_sigma=True, train__objective="ddpm", passes=[],
                  sample={"sampler": "ddim", "steps": 2, "guidance": "cfg", "scale": 1.5})
    res = train(s, tmp_path, **quiet())
    assert res["step"] == 3 and all(math.isfinite(v) for v in res["losses"])
    assert res["samples"] and os.path.exists(res["samples"])


def run_cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sprintc", "train", *args], capture_output=True, text=True, env=env, cwd=kw.get("cwd"), timeout=300)


def test_cli_errors_exit_2_without_traceback(tmp_path):
    f = tmp_path / "s.yaml"
    yaml.safe_dump(load_spec(spec(), train__data={"kind": "latents", "path": str(tmp_path / "none")}).model_dump(mode="json"), f.open("w"))
    r = run_cli(str(f), "--out", str(tmp_path / "o"), "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "sprintc train: error: train.data.path: folder" in r.stderr and "does not exist" in r.stderr
    r = run_cli(str(f), "--steps", "0")
    assert r.returncode == 2 and "--steps: 0 must be >= 1" in r.stderr
    r = run_cli(str(f), "--model", "nowhere.mod:make", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nowhere.mod" in r.stderr


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    f = tmp_path / "s.yaml"
    yaml.safe_dump(spec(stages=((10000, 4, True),), checkpoint_every=10000), f.open("w"))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "sprintc", "train", str(f), "--out", str(out), "--device", "cpu", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "metrics.jsonl").exists() or \
                sum('"loss"' in line for line in open(out / "metrics.jsonl")) < 2:
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert "stopped by signal at step" in stdout
    c = ckpt.load(out)
    assert c.step >= 2 and c.state["step"] == c.step and c.state["cursor"] == 4 * c.step


def test_user_model_flag(tmp_path, monkeypatch):
    """--model file.py:factory: the user's model, rewritten with the spec's passes, trains and reloads."""
    (tmp_path / "mymodels.py").write_text(
        "from sprintc.model import DiT\nfrom sprintc.spec import ModelSpec\n\n"
        "def small():\n    m = DiT(ModelSpec(input={'channels': 1, 'size': 8}, patch=2, width=64, depth=4, heads=4,\n"
        "                   pos='rope', qk_norm='rms', num_classes=10))\n"
        "    return m\n")
    f = tmp_path / "s.yaml"
    yaml.safe_dump(spec(stages=((2, 4, True),)), f.open("w"))
    monkeypatch.chdir(tmp_path)
    ref = f"{tmp_path / 'mymodels.py'}:small"
    assert main(["train", str(f), "--out", "run", "--device", "cpu", "--no-progress", "--model", ref]) == 0
    m = ckpt.load_for_inference(tmp_path / "run")
    assert type(m).__name__ == "DiT" and "sprint" in m._modules and not m.training
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "model_ref.txt").read_text() == ref
    # resuming needs the same model
    assert main(["train", str(f), "--out", "run", "--device", "cpu", "--resume", "--steps", "3"]) == 2


# ------------------------------------------------------------------------------------ CUDA-graph step policy
def test_a_failed_capture_goes_on_without_the_graph_on_one_process_and_stops_ddp(monkeypatch):
    """What StepRunner does when the capture fails (the capture itself is checked on a GPU, tests/test_cuda.py)."""
    import sprintc.train as T
    from sprintc.targets_api import CaptureError, CudaGraphStep

    with pytest.raises(SprintcError, match="CUDA"):  # no capture on the CPU: a clear error, not a CUDA traceback
        CudaGraphStep(lambda b: b)({"x": torch.zeros(1)})

    class FailingCapture:
        def __init__(self, step, **kw):
            pass

        def __call__(self, b):
            raise CaptureError("CUDA graph capture of the step failed (RuntimeError: a host sync)")

    monkeypatch.setattr(T, "CudaGraphStep", FailingCapture)
    monkeypatch.setattr(T, "train_step", lambda *args: ("plain step", args[-1]))
    notes, events, net = [], [], torch.nn.Linear(2, 2)
    log = types.SimpleNamespace(note=notes.append, event=lambda **rec: events.append(rec))
    runner = T.StepRunner(net, None, None, net, 1.0, None, True, log)
    assert runner.graphs
    assert runner({"x": 1}) == ("plain step", {"x": 1}) and not runner.graphs
    assert "a host sync" in notes[0] and "training without it" in notes[0]
    assert events[0]["event"] == "cuda_graph_fallback" and "a host sync" in events[0]["error"]  # in metrics.jsonl
    assert runner({"x": 2}) == ("plain step", {"x": 2})

    runner = T.StepRunner(net, None, None, net, 1.0, None, True, None)
    runner.ddp = True  # DDP's reducer is mid-iteration after a failed capture: stop, say how to go on
    with pytest.raises(SprintcError, match="a host sync.*target.cuda_graphs: false"):
        runner({"x": 1})


def test_each_rank_draws_its_share_of_the_batch_and_its_own_middle_rows():
    from sprintc.train import draw_routing

    spec = tiny_spec()
    spec["passes"][3]["p"] = 0.25
    sprint = build(spec).sprint
    whole = draw_routing(sprint, 8, "cpu", torch.Generator().manual_seed(0))
    parts = [draw_routing(sprint, 8, "cpu", torch.Generator().manual_seed(0), rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat([p["ids_keep"] for p in parts]), whole["ids_keep"])  # one global draw, sliced
    assert whole["middle_rows"].shape == (6,)  # 8 samples: 2 skip the middle
    for p in parts:  # 4 samples per rank: 1 skips the middle, and is dropped
        assert p["path_drop"].shape == (4,) and p["middle_rows"].shape == (3,)
        skipped = torch.ones(4, dtype=torch.bool)
        skipped[p["middle_rows"]] = False
        assert p["path_drop"][skipped].all()
    spec["passes"][3]["skip_middle"] = False
    assert "middle_rows" not in draw_routing(build(spec).sprint, 8, "cpu", torch.Generator().manual_seed(0))
