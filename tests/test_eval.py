"""`sprintc eval`: the Frechet distance, the digits classifier and its cache, the generic extractor mode."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

import sprintc
from sprintc.cli import main
from sprintc.errors import SprintcError
from sprintc.evaluate import (DigitsFD, digits_classifier, extract, frechet_distance, real_digits, split, trace_sqrt_product,
                              trace_sqrt_product_eig)
from sprintc.images import save_npz, to_rgb, to_uint8
from conftest import tiny_spec


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def fd(cache):
    return DigitsFD(cache)


def random_cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal covariances: sum over dims
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), s1, np.ones(3), s2) == pytest.approx(3 + (1 + 0 + 4))
    c = random_cov(16, 0)
    assert frechet_distance(np.zeros(16), c, np.zeros(16), c) == pytest.approx(0, abs=1e-8)


def test_scipy_and_eigen_paths_agree():
    a, b = random_cov(24, 1), random_cov(24, 2)
    assert trace_sqrt_product(a, b) == pytest.approx(trace_sqrt_product_eig(a, b), rel=1e-8)
    # rank-deficient covariances (fewer samples than dims) stay finite
    x = np.random.default_rng(3).normal(size=(5, 12))
    s = np.cov(x, rowvar=False)
    assert np.isfinite(trace_sqrt_product(s, random_cov(12, 4)))
    assert trace_sqrt_product(s, s) == pytest.approx(np.trace(s), rel=1e-4)


def test_classifier_is_accurate_and_cached(cache, fd):
    assert fd.classifier_accuracy > 0.95
    path = cache / "digits_classifier.safetensors"
    assert path.is_file()
    again, acc = digits_classifier(cache)  # loads, no training: same weights
    assert acc == fd.classifier_accuracy
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fd.net.state_dict().values()))


def test_corrupt_cache_is_replaced(tmp_path, monkeypatch):
    import sprintc.evaluate as ev

    trained = []
    monkeypatch.setattr(ev, "train_classifier", lambda: trained.append(1) or (ev.DigitsNet(), 0.5))  # skip the real training
    (tmp_path / "digits_classifier.safetensors").write_bytes(b"garbage")
    msgs = []
    net, acc = digits_classifier(tmp_path, log=msgs.append)
    assert "unreadable" in msgs[0] and acc == 0.5 and trained == [1]
    _, acc = digits_classifier(tmp_path)  # the replacement loads without training again
    assert acc == 0.5 and trained == [1]


def test_digits_fd_orders_real_blurred_noise(fd):
    x, y = real_digits()
    _, te = split(len(y), y.numpy())
    real = fd.score(x[te], y[te].numpy())
    blurred = fd.score(F.avg_pool2d(x[te], 3, 1, 1))
    noise = fd.score(torch.rand(450, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert real["fd"] < blurred["fd"] / 10 < noise["fd"] / 10
    assert real["label_accuracy"] > 0.95
    # uint8 HWC (the .npz layout) and float CHW give the same features
    u8 = to_rgb(to_uint8(x[te]))
    assert fd.score(u8)["fd"] == pytest.approx(real["fd"], rel=2e-2)  # 8-bit rounding moves it a little


def test_eval_cli_on_npz_and_with_a_user_extractor(tmp_path, cache, capsys):
    x, y = real_digits()
    _, te = split(len(y), y.numpy())
    npz = save_npz(tmp_path / "s.npz", to_rgb(to_uint8(x[te])), y[te].numpy())
    assert main(["eval", "--samples", str(npz), "--cache", str(cache), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "FD " in out and "held-out test accuracy" in out and "conditioning label" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 450 and r["fd"] < 10
    # generic: a TorchScript extractor and a reference of images, of activations, of statistics
    net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; still supported
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(tmp_path / "f.pt"))
    ref_imgs = save_npz(tmp_path / "ref.npz", to_rgb(to_uint8(x[:400])))
    assert main(["eval", "--samples", str(npz), "--features", str(tmp_path / "f.pt"), "--ref", str(ref_imgs),
                 "--json", str(tmp_path / "g.json")]) == 0
    g = json.loads((tmp_path / "g.json").read_text())
    with torch.no_grad():
        acts = net(torch.from_numpy(to_rgb(to_uint8(x[:400]))).float().permute(0, 3, 1, 2) / 255).numpy()
    np.savez(tmp_path / "acts.npz", acts=acts)
    np.savez(tmp_path / "mu.npz", mu=acts.mean(0), sigma=np.cov(acts, rowvar=False))
    ep = torch.export.export(net, (torch.rand(4, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "f.pt2"))
    for ref, feats in (("acts.npz", "f.pt"), ("mu.npz", "f.pt"), ("ref.npz", "f.pt2")):
        assert main(["eval", "--samples", str(npz), "--features", str(tmp_path / feats), "--ref", str(tmp_path / ref),
                     "--json", str(tmp_path / "h.json")]) == 0
        assert json.loads((tmp_path / "h.json").read_text())["fd"] == pytest.approx(g["fd"], rel=1e-4)


def test_eval_cli_bad_input(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    np.savez(tmp_path / "float.npz", np.zeros((4, 8, 8, 3), np.float32))
    (tmp_path / "f.pt").write_bytes(b"not torchscript")
    cases = [
        (["--samples", str(tmp_path / "nope.npz")], "no such .npz"),
        (["--samples", str(tmp_path / "bad.npz")], "no arr_0"),
        (["--samples", str(tmp_path / "float.npz")], "expected uint8 images"),
        (["--samples", str(tmp_path / "bad.npz"), "--features", str(tmp_path / "f.pt")], "give --ref"),
        (["--samples", str(tmp_path / "bad.npz"), "--ref", str(tmp_path / "bad.npz")], "only used with --features"),
        (["--ckpt", str(tmp_path)], "give the spec too"),
    ]
    for argv, msg in cases:
        assert main(["eval", *argv]) == 2
        assert msg in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["eval", "--samples", str(tmp_path / "ok.npz"), "--features", str(tmp_path / "f.pt"), "--ref", str(tmp_path / "ok.npz")]) == 2
    assert "not a TorchScript file" in capsys.readouterr().err

    def broken(x):  # an extractor that fails with no message at all
        raise RuntimeError()
    with pytest.raises(SprintcError, match=r"--features f.pt: the feature extractor failed on images \(4, 3, 8, 8\) \(RuntimeError: \)"):
        extract(broken, np.zeros((4, 8, 8, 3), np.uint8), where="--features f.pt")
    (tmp_path / "f.pt2").write_bytes(b"not an export")
    assert main(["eval", "--samples", str(tmp_path / "ok.npz"), "--features", str(tmp_path / "f.pt2"), "--ref", str(tmp_path / "ok.npz")]) == 2
    assert "not a torch.export (.pt2) file" in capsys.readouterr().err


def test_eval_cli_samples_a_checkpoint(tmp_path, cache, capsys):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(model__input={"channels": 1, "size": 8})))
    model = sprintc.build(sprintc.load_spec(spec_path))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["eval", str(spec_path), "--ckpt", str(tmp_path / "w.safetensors"), "--n", "6", "--steps", "2",
                 "--sampler", "euler", "--guidance", "cfg", "--scale", "2", "--cache", str(cache),
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 6 and np.isfinite(r["fd"]) and "euler, 2 steps, cfg x2" in r["samples"]
