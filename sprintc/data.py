"""Training data: the bundled digits, a folder of latent shards, or an image folder (one sub-folder per class).

Everything is loaded once into memory as `Data(x, y)`: x (N, C, [T,] H, W) in its stored dtype (latents stay
float16 if saved so; images stay uint8), y (N,) int64. The order of samples is a pure function of the seed
and the position in the sample stream (`Stream`), so a run is the same for any number of ranks and resumes
exactly from a saved cursor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sprintc.errors import DataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Data:
    x: torch.Tensor  # (N, C, [T,] H, W): float latents/pixels in [-1, 1], or uint8 pixels (0..255)
    y: torch.Tensor  # (N,) int64 class labels
    source: str

    def __len__(self):
        return self.x.shape[0]

    def to(self, device):
        return Data(self.x.to(device), self.y.to(device), self.source)

    def batch(self, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx` as float32 on `device` (uint8 pixels are scaled to [-1, 1]), without a host sync."""
        idx = _copy(idx, self.x.device)
        x, y = _copy(self.x[idx], device), _copy(self.y[idx], device)
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        return x, y


def _copy(t: torch.Tensor, device) -> torch.Tensor:
    """To `device` without waiting: a blocking copy to a GPU first waits for all the work queued there, which
    each step would stall the host that should be preparing the next one. Host tensors go through pinned memory
    (a non-blocking copy from pageable memory may still wait)."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class Stream:
    """An endless stream of sample indices: epoch e is a permutation drawn from seed (seed, e).
    Position p of the stream is sample perm_{p // N}[p % N]; the cursor p is all the state there is."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def _perm_of(self, epoch):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def take(self, cursor: int, count: int) -> torch.Tensor:
        out, p = [], cursor
        while p < cursor + count:
            epoch, i = divmod(p, self.n)
            k = min(self.n - i, cursor + count - p)
            out.append(self._perm_of(epoch)[i : i + k])
            p += k
        return torch.cat(out)


# ------------------------------------------------------------------------------------------ loading
def load_data(spec) -> Data:
    """The dataset of `spec.train.data`, checked against the model's input shape and classes."""
    d, m = spec.train.data, spec.model
    if d.kind == "digits":
        data = load_digits(m.input.channels, m.input.size, frames=m.input.frames)
    elif d.kind == "latents":
        data = load_latents(_folder(d.path, "latents"))
    else:
        data = load_image_folder(_folder(d.path, "images"), m.input.channels, m.input.size, frames=m.input.frames)
    check(data, spec)
    return data


def _folder(path, kind) -> Path:
    if not path:
        raise DataError(f"train.data.path: data kind {kind!r} needs a folder path (train.data.path)")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"train.data.path: folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise DataError(f"train.data.path: {str(p)!r} is a file; expected a folder of {kind}")
    return p


def load_digits(channels: int, size: int, frames=None) -> Data:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, values 0..16, 10 classes), resized
    bilinearly to size x size, scaled to [-1, 1] and repeated over `channels`."""
    if frames is not None:
        raise DataError("train.data.kind: the digits are still images; a video model (model.input.frames) needs kind: latents")
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x * 2 - 1).clamp(-1, 1).expand(-1, channels, -1, -1).contiguous()
    return Data(x, torch.from_numpy(d.target).long(), "scikit-learn digits")


def _read_shard(f: Path) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """(latents, labels) of one shard file; DataError naming the file if it is unreadable or lacks a key."""
    try:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                keys = set(fh.keys())
                if not {"latents", "labels"} <= keys:
                    raise DataError(f"{f}: a latent shard must hold tensors 'latents' (N, C, H, W) and 'labels' (N,); found {sorted(keys)}")
                return fh.get_tensor("latents"), fh.get_tensor("labels")
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                if not {"latents", "labels"} <= set(z.files):
                    raise DataError(f"{f}: a latent shard must hold arrays 'latents' (N, C, H, W) and 'labels' (N,); found {sorted(z.files)}")
                return z["latents"], z["labels"]
        raise AssertionError(f.suffix)
    except DataError:
        raise
    except Exception as e:  # safetensors / numpy / zipfile raise many types for a damaged file
        raise DataError(f"{f}: cannot read the shard ({type(e).__name__}: {e}); the file is corrupt or not a {f.suffix} file") from None


def _read_npy(f: Path):
    try:
        return np.load(f, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{f}: cannot read ({type(e).__name__}: {e}); the file is corrupt or not a .npy file") from None


def _as_tensor(a, what: str, where: Path) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if a.dtype.kind not in "fiub":
        raise DataError(f"{where}: {what} have dtype {a.dtype}; expected a float (latents) or integer (labels) array")
    return torch.from_numpy(np.ascontiguousarray(a))


def latent_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """Shards of a latent folder: *.safetensors or *.npz (latents and labels in one file), or the fast-DiT
    layout of matching .npy files in `features/` (or `latents/`) and `labels/` sub-folders."""
    shards = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".npz") and p.is_file())
    feats = next((folder / s for s in ("features", "latents") if (folder / s).is_dir()), None)
    pairs = []
    if feats is not None and (folder / "labels").is_dir():
        for f in sorted(feats.glob("*.npy"), key=lambda p: (len(p.stem), p.stem)):
            lab = folder / "labels" / f.name
            if not lab.is_file():
                raise DataError(f"{f}: no matching labels file {lab}; each features/NAME.npy needs labels/NAME.npy")
            pairs.append((f, lab))
    return [(s, None) for s in shards] + pairs


def load_latents(folder: Path) -> Data:
    files = latent_files(folder)
    if not files:
        raise DataError(f"{folder}: no latent shards; expected *.safetensors or *.npz files holding 'latents' and "
                        "'labels', or features/*.npy with matching labels/*.npy")
    xs, ys = [], []
    for f, lab in files:
        x, y = _read_shard(f) if lab is None else (_read_npy(f), _read_npy(lab))
        x, y = _as_tensor(x, "latents", f), _as_tensor(y, "labels", lab or f)
        if x.dtype not in FLOAT_DTYPES:
            raise DataError(f"{f}: latents have dtype {x.dtype}; expected float16, bfloat16, float32 or float64")
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise DataError(f"{lab or f}: labels have dtype {y.dtype}; expected integers")
        y = y.reshape(-1) if y.dim() == 2 and y.shape[1] == 1 else y
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{lab or f}: labels have shape {tuple(y.shape)}; expected ({x.shape[0]},), one per latent")
        if x.shape[0] == 0:
            raise DataError(f"{f}: the shard holds no latents")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"{f}: latents of shape {tuple(x.shape[1:])} differ from {tuple(xs[0].shape[1:])} in {files[0][0].name}")
        xs.append(x if x.dtype != torch.float64 else x.float())
        ys.append(y.long())
    dtype = xs[0].dtype
    x = torch.cat([a.to(dtype) for a in xs]) if len(xs) > 1 else xs[0]
    return Data(x, torch.cat(ys), f"{len(files)} latent shard(s) in {folder}")


def load_image_folder(folder: Path, channels: int, size: int, frames=None) -> Data:
    """folder/<class>/*.png|jpg: classes are the sub-folders in sorted order. Each image is centre-cropped
    to a square and resized (bicubic) to size x size; stored as uint8."""
    from PIL import Image, UnidentifiedImageError

    if frames is not None:
        raise DataError("train.data.kind: an image folder holds still images; a video model (model.input.frames) needs kind: latents")
    if channels not in (1, 3):
        raise DataError(f"model.input.channels: an image folder gives 1 (grey) or 3 (RGB) channels; the spec asks for {channels}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class sub-folders; expected one folder per class holding images, e.g. {folder}/cat/001.png")
    xs, ys = [], []
    for label, cdir in enumerate(classes):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if channels == 1 else "RGB")
                    w, h = im.size
                    s = min(w, h)
                    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                    im = im.resize((size, size), Image.BICUBIC)
                    a = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"{f}: cannot read the image ({e})") from None
            xs.append(torch.from_numpy(a.copy()).reshape(size, size, channels).permute(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"{folder}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTS))})")
    return Data(torch.stack(xs), torch.tensor(ys, dtype=torch.long), f"{len(xs)} images in {len(classes)} classes in {folder}")


def check(data: Data, spec):
    """The data must match the model: shape (C, [T,] H, W), dtype, label range, finite values."""
    m = spec.model
    want = (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    got = tuple(data.x.shape[1:])
    if got != want:
        what = "channels" if got[1:] == want[1:] else "size"
        raise DataError(f"{data.source}: samples have shape {got} (C, [T,] H, W) but the spec's model.input wants {want} "
                        f"(its {what} differ); extract the data for this input or change model.input")
    if data.x.dtype not in FLOAT_DTYPES + (torch.uint8,):
        raise DataError(f"{data.source}: samples have dtype {data.x.dtype}; expected a float dtype or uint8")
    if data.x.is_floating_point() and not bool(torch.isfinite(data.x).all()):
        raise DataError(f"{data.source}: the samples hold NaN or inf values")
    lo, hi = int(data.y.min()), int(data.y.max())
    if m.num_classes and (lo < 0 or hi >= m.num_classes):
        raise DataError(f"{data.source}: labels span {lo}..{hi} but model.num_classes is {m.num_classes} (labels must lie in 0..{m.num_classes - 1})")


def describe(data: Data) -> str:
    mb = data.x.numel() * data.x.element_size() / 2**20
    return f"{data.source}: {len(data)} samples {tuple(data.x.shape[1:])} {str(data.x.dtype).removeprefix('torch.')} ({math.ceil(mb)} MiB)"
