"""Session AC, phase ac9 (on a checkout of af67a7a, the reverted trial: it needs passes/fuse.py's _mask_choices): where a
transformed model with float32 weights under autocast and one with bf16 weights (MasterAdamW) first differ on this
CPU, fuse's split on and off. Usage: python3 scripts/gpu_diag_split.py tests/"""
import copy, sys
import torch
sys.path.insert(0, sys.argv[1])  # tests/
import sprintc
from sprintc.passes import fuse as fuse_pass
from sprintc.optim import MasterAdamW
from test_transform import ROUTED, DiT, inputs

orig = fuse_pass._mask_choices
for split in (True, False):
    fuse_pass._mask_choices = orig if split else (lambda m: [])
    torch.manual_seed(0)
    ref = DiT(); sprintc.transform(ref, ROUTED); ref.train()
    net = copy.deepcopy(ref); MasterAdamW(net, lr=1e-3)
    x, t, y = inputs(4, seed=0)
    outs = []
    for m in (ref, net):
        torch.manual_seed(100)
        with torch.autocast("cpu", torch.bfloat16):
            out = m(x, t, y)
            loss = (out.float() - x).square().mean()
        loss.backward()
        outs.append(out)
    print(f"split={split} torch {torch.__version__} threads {torch.get_num_threads()} out diff {(outs[0].float() - outs[1].float()).abs().max().item():.3g}")
    for (n, a), b in zip(ref.named_parameters(), net.parameters()):
        if a.grad is None or b.grad is None:
            continue
        d = (a.grad.float() - b.grad.float()).abs().max().item()
        if d > 0:
            print(f"  grad {n}: {d:.3g} (|g| {a.grad.abs().max().item():.3g})")
print(torch.__config__.show()[:600])
