"""Writing samples: a PNG grid, one PNG per image, and the .npz layout the ADM evaluator reads
(`arr_0`: uint8 (N, H, W, 3), `arr_1`: int64 labels when there are labels)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sprintc.errors import SprintcError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), C 1 or 3."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise SprintcError(f"images: expected (N, 1 or 3, H, W) pixels in [-1, 1], got shape {tuple(images.shape)}"
                           " (latents are not images: decode them first)")
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_rgb(u8: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, H, W, 3), a single channel replicated."""
    return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8


def _pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[..., 0], "L") if a.shape[-1] == 1 else Image.fromarray(a, "RGB")


def grid_array(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    u8 = to_uint8(images)
    n, h, w, c = u8.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = u8[i]
    return out


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int = 1) -> Path:
    """Images in [-1, 1] as one PNG grid (`nrow` images per row; `scale` enlarges small images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _pil(grid_array(images, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_pngs(images: torch.Tensor, folder, start: int = 0, labels=None) -> list[Path]:
    """One PNG per image: 000000.png (or 000000_c3.png with a label)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, a in enumerate(to_uint8(images)):
        name = f"{start + i:06d}" + (f"_c{int(labels[i])}" if labels is not None else "") + ".png"
        _pil(a).save(folder / name)
        out.append(folder / name)
    return out


def save_npz(path, u8_rgb: np.ndarray, labels=None) -> Path:
    """ADM evaluator layout: arr_0 uint8 (N, H, W, 3) (+ arr_1 labels)."""
    if u8_rgb.dtype != np.uint8 or u8_rgb.ndim != 4 or u8_rgb.shape[-1] != 3:
        raise SprintcError(f"npz: expected uint8 (N, H, W, 3), got {u8_rgb.dtype} {u8_rgb.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [u8_rgb] + ([np.asarray(labels, dtype=np.int64)] if labels is not None else [])
    np.savez(path, *arrays)
    return path


def load_npz_images(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an ADM-layout .npz: (uint8 (N, H, W, 3), labels or None)."""
    path = Path(path)
    if not path.is_file():
        raise SprintcError(f"{path}: no such .npz file")
    try:
        with np.load(path) as z:
            if "arr_0" not in z.files:
                raise SprintcError(f"{path}: no arr_0 array (found {', '.join(z.files) or 'nothing'}); expected the ADM layout arr_0 uint8 (N, H, W, 3)")
            a = z["arr_0"]
            labels = z["arr_1"] if "arr_1" in z.files else None
    except (ValueError, OSError) as e:
        raise SprintcError(f"{path}: not a readable .npz file ({e})") from None
    return a, labels
