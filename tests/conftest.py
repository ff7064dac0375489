from pathlib import Path

import pytest
import torch

# tiny models: one thread is several times faster than two on 2 shared cores (no OpenMP spin contention)
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"


def tiny_spec(**over) -> dict:
    """A tiny SPRINT spec (8x8x4 input, 16 tokens, width 64): for fast CPU tests."""
    spec = {
        "name": "tiny",
        "model": {"input": {"channels": 4, "size": 8}, "patch": 2, "width": 64, "depth": 4, "heads": 4,
                  "pos": "rope", "qk_norm": "rms", "num_classes": 10},
        "passes": [{"name": "partition", "encoder": 1, "decoder": 1},
                   {"name": "route", "sampler": "structured", "drop": 0.75},
                   {"name": "fuse", "kind": "concat_linear"},
                   {"name": "path_drop", "p": 0.1},
                   {"name": "pdg"}],
        "target": {"name": "eager", "dtype": "float32"},
    }
    for k, v in over.items():
        node = spec
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return spec


@pytest.fixture
def tiny():
    return tiny_spec


@pytest.fixture
def modulation_products(monkeypatch):
    """The size k of each one-matmul product of modulations (sprintc/modulation.py) run during the test."""
    from sprintc.modulation import _Product

    seen, forward = [], _Product.forward
    monkeypatch.setattr(_Product, "forward", staticmethod(lambda ctx, h, k, *p: seen.append(k) or forward(ctx, h, k, *p)))
    return seen
