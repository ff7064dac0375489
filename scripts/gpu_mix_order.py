"""Inductor's mix-order reductions on the scale-shift-table model of tests/test_cuda.py, on and off through
target.mix_order_reduction: the largest relative error of each parameter's gradient against eager, over two steps
(pytorch#193061 left a slice of the table's gradient unwritten on torch 2.10-2.14). Needs a CUDA GPU.

    python scripts/gpu_mix_order.py
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_cuda import _TableNet  # noqa: E402

from sprintc.targets_api import lower  # noqa: E402


def errors(mix_order: bool) -> dict:
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = _TableNet(256).cuda()
    model = lower(copy.deepcopy(ref), {"name": "inductor", "dtype": "float32", "mix_order_reduction": mix_order},
                  device="cuda")
    x, temb = torch.randn(2, 16384, 256, device="cuda"), torch.randn(1, 6, 256, device="cuda")
    worst = {}
    for _ in range(2):
        for m in (ref, model):
            m.zero_grad(set_to_none=True)
            m(x, temb).square().mean().backward()
        for (name, a), b in zip(model.named_parameters(), ref.parameters()):
            err = ((a.grad - b.grad).norm() / b.grad.norm()).item()
            worst[name] = max(worst.get(name, 0.0), err)
    return worst


if __name__ == "__main__":
    print("torch", torch.__version__)
    for flag in (False, True):
        try:
            print(f"mix_order_reduction={flag}:", {k: f"{v:.2e}" for k, v in errors(flag).items()})
        except Exception as e:  # noqa: BLE001 - shown, not hidden: the point is what each setting does
            print(f"mix_order_reduction={flag}: {type(e).__name__}: {str(e).splitlines()[0]}")
