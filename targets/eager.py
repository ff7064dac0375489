"""eager: the model as PyTorch runs it, under the target's autocast dtype (float32 output)."""
from __future__ import annotations

import torch
import torch.nn as nn

from sprintc.spec import TargetSpec
from sprintc.targets_api import Lowering, wrap_forwards


def lower(model: nn.Module, target: TargetSpec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    wrap_forwards(model, Lowering(target, device, dtype))
    return model
