"""What only a GPU can check; skipped on the CPU. Run on the device with `python -m pytest tests/test_cuda.py`."""
import pytest
import torch

from test_train import spec
from sprintc.model import Attention, rope_angles
from sprintc.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_training_equals_plain_steps(tmp_path, dtype):
    """The captured step (warm-up, capture, replays, a recapture for the second stage) gives the losses of
    the plain steps: the draws are made outside the graph and the lr warm-up is read from the device."""
    runs = {}
    for graphs in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), checkpoint_every=5)
        s["target"] = {"name": "eager", "dtype": dtype, "cuda_graphs": graphs}
        runs[graphs] = train(s, tmp_path / str(graphs), device="cuda", progress=False)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


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
