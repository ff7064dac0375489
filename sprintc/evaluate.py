"""`sprintc eval`: Frechet distance of samples against data.

Digits (the default): features are the 64-d penultimate layer of a small CNN classifier that sprintc trains
on scikit-learn's bundled digits (75/25 stratified split, seed 0; seconds on a CPU) and caches at
~/.cache/sprintc/digits_classifier.safetensors (or --cache DIR). The real statistics are those of all 1,797
digits, resized as sprintc's training data is (bilinear to 16x16, [-1, 1]). Also reported: the classifier's
held-out test accuracy, and how often it assigns a sample its conditioning label.

Generic: --features FILE is a feature extractor saved with torch.export.save (.pt2, with a dynamic batch
dimension) or torch.jit.save (TorchScript), taking float32 (N, 3, H, W) in [0, 1] and returning (N, D); --ref REF.npz holds reference images (arr_0 uint8 (N, H, W, 3)), or
activations (`acts` (N, D)), or statistics (`mu` (D,), `sigma` (D, D)). Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sprintc.errors import SprintcError, first_line

SIZE = 16  # the classifier's input size: the digits spec's resolution
VERSION = "1"  # bump when the classifier or its training changes: the cache is retrained


# ------------------------------------------------------------------------------------------ FD
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise SprintcError(f"Frechet distance: statistics of different sizes (mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}); "
                           "were they made with the same feature extractor?")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def trace_sqrt_product(s1, s2) -> float:
    """tr((s1 s2)^1/2) for covariance matrices: scipy's sqrtm when scipy is installed, else eigenvalues."""
    try:
        from scipy import linalg
    except ImportError:
        return trace_sqrt_product_eig(s1, s2)
    def sqrtm(m):
        with warnings.catch_warnings():  # near-singular products warn; checked below instead
            warnings.simplefilter("ignore")
            return linalg.sqrtm(m)

    covmean = sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals (as pytorch-fid)
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = sqrtm((s1 + off) @ (s2 + off))
    return float(np.real(np.trace(covmean)))


def trace_sqrt_product_eig(s1, s2) -> float:
    """The same without scipy: tr((s1 s2)^1/2) = sum sqrt(eig(A s2 A)), A = s1^1/2 (symmetric PSD)."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ s2 @ a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def stats(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    acts = np.asarray(acts, np.float64)
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise SprintcError(f"Frechet distance needs at least 2 feature vectors (N, D); got shape {acts.shape}")
    return acts.mean(0), np.cov(acts, rowvar=False)


# ------------------------------------------------------------------------------------------ digits classifier
class DigitsNet(nn.Module):
    """16x16 single-channel digits -> 10 classes; `features` is the 64-d penultimate layer (pre-ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc, self.head = nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))

    def forward(self, x):
        return self.head(F.relu(self.features(x)))


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as sprintc trains on them: (N, 1, 16, 16) in [-1, 1], and labels."""
    from sprintc.data import load_digits

    d = load_digits(1, SIZE)
    return d.x, d.y


def split(n: int, labels: np.ndarray):
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(n), test_size=0.25, random_state=0, stratify=labels)


def train_classifier(epochs: int = 15, seed: int = 0) -> tuple[DigitsNet, float]:
    """Train on 75% of the digits (random 1-pixel shifts as augmentation); returns (net, test accuracy)."""
    x, y = real_digits()
    tr, te = split(len(y), y.numpy())
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # nn init uses the global RNG
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xtr, ytr = x[tr], y[tr]
    for _ in range(epochs):
        perm = torch.randperm(len(tr), generator=g)
        for i in range(0, len(tr), 64):
            idx = perm[i : i + 64]
            xb = xtr[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, (dx, dy), (2, 3))
            loss = F.cross_entropy(net(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    return net, acc


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sprintc"


def digits_classifier(cache=None, log=None) -> tuple[DigitsNet, float]:
    """The cached classifier and its held-out test accuracy; trained (seconds) and cached on first use.
    A cache file that does not load is replaced."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    path = cache_dir(cache) / "digits_classifier.safetensors"
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            net = DigitsNet()
            net.load_state_dict(load_file(str(path)))
            if meta.get("version") == VERSION:
                return net.eval(), float(meta["test_accuracy"])
        except (SafetensorError, RuntimeError, KeyError, ValueError, OSError):
            pass
        if log:
            log(f"{path}: stale or unreadable; training the digits classifier again")
    elif log:
        log(f"training the digits feature classifier (cached at {path})")
    net, acc = train_classifier()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(net.state_dict(), str(tmp), metadata={"version": VERSION, "test_accuracy": repr(acc)})
        os.replace(tmp, path)
    except OSError as e:
        if log:
            log(f"could not cache the classifier at {path} ({e.strerror}); it will be trained again next time")
    return net, acc


def to_classifier_input(images) -> torch.Tensor:
    """uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1] -> (N, 1, 16, 16) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise SprintcError(f"images: expected uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
    else:
        x = images.detach().float().cpu()
        if x.dim() != 4:
            raise SprintcError(f"images: expected (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise SprintcError(f"images: {x.shape[1]} channels; the digits features take grey or RGB images (decode latents first)")
    x = x.mean(1, keepdim=True)
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


class DigitsFD:
    """FD against the real digits in the classifier's feature space. `score(images, labels)` returns
    {'fd', 'n', 'label_accuracy' (if labels)}; `classifier_accuracy` is the held-out test accuracy."""

    def __init__(self, cache=None, log=None):
        self.net, self.classifier_accuracy = digits_classifier(cache, log)
        x, _ = real_digits()
        self.real_mu, self.real_sigma = stats(self.features(x))

    @torch.no_grad()
    def features(self, images, logits=False):
        x = to_classifier_input(images)
        outs = [self.net.features(x[i : i + 512]) for i in range(0, len(x), 512)]
        f = torch.cat(outs)
        return (f.numpy(), self.net.head(F.relu(f)).argmax(1).numpy()) if logits else f.numpy()

    def score(self, images, labels=None) -> dict:
        f, pred = self.features(images, logits=True)
        mu, sigma = stats(f)
        out = {"fd": frechet_distance(mu, sigma, self.real_mu, self.real_sigma), "n": int(len(f))}
        if labels is not None:
            out["label_accuracy"] = float((pred == np.asarray(labels)).mean())
        return out


# ------------------------------------------------------------------------------------------ generic
def load_extractor(path):
    """A feature extractor file: torch.export (.pt2, via torch.export.save) or TorchScript (torch.jit.save)."""
    path = Path(path)
    if not path.is_file():
        raise SprintcError(f"--features {path}: no such file (a feature extractor saved with torch.export.save as .pt2, or torch.jit.save)")
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated in recent torch; it still loads
            warnings.simplefilter("ignore", FutureWarning)
            if path.suffix == ".pt2":
                return torch.export.load(str(path)).module()
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        kind = "torch.export (.pt2)" if path.suffix == ".pt2" else "TorchScript"
        raise SprintcError(f"--features {path}: not a {kind} file ({type(e).__name__}: {first_line(e, 200)}); "
                           "save the extractor with torch.export.save(torch.export.export(model, ...), 'f.pt2') "
                           "or torch.jit.save(torch.jit.script(model), 'f.pt')") from None


@torch.no_grad()
def extract(fn, u8: np.ndarray, batch: int = 256, where="features") -> np.ndarray:
    out = []
    for i in range(0, len(u8), batch):
        x = torch.from_numpy(u8[i : i + batch]).float().permute(0, 3, 1, 2) / 255.0
        try:
            f = fn(x)
        except Exception as e:
            raise SprintcError(f"{where}: the feature extractor failed on images {tuple(x.shape)} ({type(e).__name__}: "
                               f"{first_line(e, 200)})") from None
        if not isinstance(f, torch.Tensor):
            raise SprintcError(f"{where}: the feature extractor must return a tensor (N, D), got {type(f).__name__}")
        out.append(f.reshape(f.shape[0], -1).double().numpy())
    return np.concatenate(out)


def reference_stats(path, fn) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise SprintcError(f"--ref {path}: no such .npz file")
    try:
        z = np.load(path)
    except (ValueError, OSError) as e:
        raise SprintcError(f"--ref {path}: not a readable .npz ({e})") from None
    with z:
        if "mu" in z.files and "sigma" in z.files:
            return z["mu"], z["sigma"]
        if "acts" in z.files:
            return stats(z["acts"])
        if "arr_0" in z.files:
            return stats(extract(fn, _check_u8(z["arr_0"], f"--ref {path}"), where=f"--ref {path}"))
        raise SprintcError(f"--ref {path}: holds {', '.join(z.files) or 'nothing'}; expected mu and sigma, acts (N, D), or arr_0 images uint8 (N, H, W, 3)")


def _check_u8(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise SprintcError(f"{where}: arr_0 is {a.dtype} {a.shape}; expected uint8 images (N, H, W, 3) (the ADM layout)")
    return np.repeat(a, 3, -1) if a.shape[-1] == 1 else a


# ------------------------------------------------------------------------------------------ command
def add_eval_arguments(p):
    from sprintc.sample import add_sampling_options

    p.add_argument("spec", nargs="?", help="with --ckpt: the spec of the checkpoint to sample from")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", help="an .npz of images in the ADM layout (arr_0 uint8 (N, H, W, 3); arr_1 labels), e.g. from `sprintc sample`")
    src.add_argument("--ckpt", help="sample from this checkpoint first (the sampling options below apply)")
    p.add_argument("--features", help="a feature extractor file (torch.export .pt2 or TorchScript): (N, 3, H, W) in [0, 1] -> (N, D); default: the digits classifier")
    p.add_argument("--ref", help="with --features: reference .npz (arr_0 images, or acts (N, D), or mu and sigma)")
    p.add_argument("--cache", help="folder for the digits classifier's weights (default ~/.cache/sprintc)")
    p.add_argument("--json", help="also write the result to this JSON file")
    add_sampling_options(p)


def run_eval(args) -> int:
    from sprintc.images import load_npz_images, to_rgb, to_uint8

    if args.ref and not args.features:
        raise SprintcError("--ref: only used with --features (the digits FD uses the bundled real digits)")
    if args.features and not args.ref:
        raise SprintcError("--features: give --ref REF.npz with the reference images, activations or statistics")
    labels = None
    if args.samples:
        u8, labels = load_npz_images(args.samples)
        u8 = _check_u8(u8, f"--samples {args.samples}")
        source = args.samples
    else:
        from sprintc.sample import prepare, sample_with_progress
        from sprintc.spec import load_spec

        if not args.spec:
            raise SprintcError("--ckpt: give the spec too: sprintc eval SPEC --ckpt CKPT")
        spec = load_spec(args.spec)
        model, lab, opts, _, step_for = prepare(args, spec)
        x, _ = sample_with_progress(model, spec, lab, args.n, batch=args.batch, seed=args.seed, step_for=step_for, **opts)
        if x.shape[1] not in (1, 3):
            raise SprintcError(f"{args.spec}: the model makes {x.shape[1]}-channel latents, not images; the FD needs images (no VAE is available offline)")
        u8 = to_rgb(to_uint8(x.clamp(-1, 1)))
        labels = None if lab is None else lab.numpy()
        source = f"{args.ckpt} ({opts['sampler']}, {opts['steps']} steps, {opts['guidance']} x{opts['scale']:g}, seed {args.seed})"
    log = lambda m: print(f"sprintc eval: {m}", file=sys.stderr)  # noqa: E731
    if args.features:
        fn = load_extractor(args.features)
        mu_r, sig_r = reference_stats(args.ref, fn)
        mu, sig = stats(extract(fn, u8, where=f"--features {args.features}"))
        result = {"fd": frechet_distance(mu, sig, mu_r, sig_r), "n": int(len(u8)), "features": str(args.features), "ref": str(args.ref)}
    else:
        fd = DigitsFD(args.cache, log)
        result = {**fd.score(u8, labels), "features": "digits classifier (64-d)", "ref": "scikit-learn digits (1,797)",
                  "classifier_test_accuracy": fd.classifier_accuracy}
    result["samples"] = str(source)
    line = f"FD {result['fd']:.4f} over {result['n']} samples vs {result['ref']}, features: {result['features']}"
    if "classifier_test_accuracy" in result:
        line += f" (held-out test accuracy {100 * result['classifier_test_accuracy']:.1f}%)"
    print(line)
    if "label_accuracy" in result:
        print(f"the classifier assigns {100 * result['label_accuracy']:.1f}% of the samples their conditioning label")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
