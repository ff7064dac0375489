"""What only a GPU can check; skipped on the CPU. Run on the device with `python -m pytest tests/test_cuda.py`."""
import pytest
import torch
from safetensors.torch import load_file

from test_train import spec
from sprintc.model import Attention, rope_angles
from sprintc.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_training_equals_plain_steps(tmp_path, dtype):
    """The captured step (warm-up, capture, replays, a recapture for the second stage) gives the losses of
    the plain steps: the draws are made outside the graph and the lr warm-up is read from the device; its EMA
    ends as the plain steps' one."""
    runs = {}
    for graphs in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), checkpoint_every=5)
        s["target"] = {"name": "eager", "dtype": dtype, "cuda_graphs": graphs}
        runs[graphs] = train(s, tmp_path / str(graphs), device="cuda", progress=False)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    emas = [load_file(f"{runs[g]['checkpoint']}/ema.safetensors") for g in (False, True)]
    assert emas[0].keys() == emas[1].keys()
    for k in emas[0]:
        torch.testing.assert_close(emas[1][k], emas[0][k], rtol=tol, atol=tol, msg=k)


def test_compiled_attention_bf16_close_to_float32():
    torch.manual_seed(0)
    attn = Attention(128, 2, "rms").cuda()
    x = torch.randn(4, 64, 128, device="cuda")
    rope = rope_angles((8, 8), 64).cuda()
    ref = attn(x, rope)
    fast = torch.compile(attn, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast(x, rope).float()
    assert (out - ref).norm() / ref.norm() < 2e-2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("target", ["eager", "inductor"])
def test_ddp_cuda_graph_training_equals_plain_steps(tmp_path, target):
    """DDP on 2 GPUs: the captured step (11 warm-up steps, capture with the all-reduces inside, replays, a
    recapture for the second stage) gives the losses of the plain DDP steps."""
    import json

    import yaml
    from test_distributed import torchrun

    runs = {}
    for graphs in (False, True):
        s = spec(stages=((16, 8, True), (14, 4, False)), checkpoint_every=100)
        s["train"]["distributed"] = "ddp"
        s["target"] = {"name": target, "dtype": "float32", "cuda_graphs": graphs}
        f = tmp_path / f"{graphs}.yaml"
        yaml.safe_dump(s, f.open("w"))
        r = torchrun(f, tmp_path / str(graphs), device="cuda")
        assert "failed" not in r.stdout + r.stderr
        runs[graphs] = [json.loads(line)["loss_last"] for line in open(tmp_path / str(graphs) / "metrics.jsonl")
                        if '"loss_last"' in line]
    a, b = runs[False], runs[True]
    assert len(a) == len(b) == 30
    assert all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_a_training_batch_reaches_the_gpu_without_a_host_sync(where):
    """The sample indices come from the host each step: a blocking copy would make the host wait for the steps
    queued on the GPU, and the GPU then wait for the host to prepare the next one."""
    from sprintc.data import Data

    data = Data(torch.randn(64, 1, 8, 8), torch.arange(64) % 10, "test").to(where)
    idx = torch.randperm(64)[:16]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y = data.batch(idx, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), data.x[idx.to(where)].float().cpu()) and torch.equal(y.cpu(), (idx % 10))
