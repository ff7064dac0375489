"""2 CPU processes (gloo, launched by torchrun exactly as users launch training) compute the same losses as
one process with the same global batch: every draw is made for the global batch and sliced per rank (path drop's
skip_middle draws a fixed count per rank instead: those tests turn it off, one runs with it)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import sprintc
from conftest import tiny_spec
from sprintc import checkpoint as ckpt
from sprintc.train import train


def spec(distributed, skip_middle=False):
    s = tiny_spec(name="t", model__input={"channels": 1, "size": 8},
                  train={"stages": [{"name": "routed", "steps": 3, "batch": 8, "lr": 1e-3},
                                    {"name": "full", "steps": 2, "batch": 4, "lr": 5e-4, "warmup": 1, "routing": False}],
                         "log_every": 1, "checkpoint_every": 2, "ema": {"decay": 0.9, "warmup": 2},
                         "distributed": distributed},
                  sample={"sampler": "euler", "steps": 2, "guidance": "pdg", "scale": 2.0})
    s["passes"][3]["skip_middle"] = skip_middle
    return s


def torchrun(spec_file, out, *extra, device="cpu", ok=True):
    # the processes import the sprintc this test imports (the checkout, or an installed wheel on a GPU machine)
    env = dict(os.environ, PYTHONPATH=str(Path(sprintc.__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sprintc", "train", str(spec_file), "--out", str(out), "--device", device, "--no-progress", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert (r.returncode == 0) == ok, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def losses(out):
    return [json.loads(line)["loss_last"] for line in open(out / "metrics.jsonl") if '"loss_last"' in line]


def check_same(one, out):
    assert losses(out) == pytest.approx(one["losses"], abs=1e-5, rel=0)
    a, b = ckpt.load(one["checkpoint"], parts=("ema",)), ckpt.load(out, parts=("ema",))
    assert a.step == b.step == 5
    assert max((a.ema[k] - b.ema[k]).abs().max().item() for k in a.ema) < 1e-5


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    torch.manual_seed(0)
    return train(spec("ddp"), tmp_path_factory.mktemp("one"), device="cpu", progress=False)


def test_ddp_two_processes_match_one(tmp_path, one_process):
    f = tmp_path / "s.yaml"
    yaml.safe_dump(spec("ddp"), f.open("w"))
    r = torchrun(f, tmp_path / "run")
    assert "done at step 5" in r.stdout and r.stdout.count("sprintc train: done") == 1  # rank 0 reports
    check_same(one_process, tmp_path / "run")
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def test_ddp_two_processes_skip_the_middle_for_their_own_dropped_samples(tmp_path):
    s = spec("ddp", skip_middle=True)
    s["passes"][3]["p"] = 0.5  # 2 of each rank's 4 samples skip the middle
    f = tmp_path / "s.yaml"
    yaml.safe_dump(s, f.open("w"))
    r = torchrun(f, tmp_path / "run")
    assert "done at step 5" in r.stdout
    assert all(math.isfinite(x) for x in losses(tmp_path / "run")) and len(losses(tmp_path / "run")) == 5
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def test_a_batch_the_processes_cannot_split_is_a_clear_error_on_every_rank(tmp_path):
    f = tmp_path / "s.yaml"
    s = spec("ddp")
    s["train"]["stages"][0]["batch"] = 5
    yaml.safe_dump(s, f.open("w"))
    r = torchrun(f, tmp_path / "run", ok=False)  # torchrun itself exits 1
    assert r.stderr.count("train.stages[routed].batch: 5 is not divisible by the 2 processes") == 2
    assert r.stderr.count("exitcode  : 2") == 2  # each rank's own status (torchrun's summary has a traceback of its own)
    assert "sprintc/" not in r.stderr  # no traceback through sprintc's code


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_and_resume(tmp_path, one_process):
    f = tmp_path / "s.yaml"
    s = spec("fsdp")
    s["train"]["sample_every"] = 2  # sampling with the sharded EMA mid-run, then EMA updates on its shards
    yaml.safe_dump(s, f.open("w"))
    torchrun(f, tmp_path / "run", "--steps", "3")
    torchrun(f, tmp_path / "run", "--resume")  # a sharded optimizer state restored from the full checkpoint
    check_same(one_process, tmp_path / "run")
