import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import tiny_spec
from sprintc.data import Stream, load_data, load_digits
from sprintc.errors import DataError
from sprintc.spec import load_spec


def spec_for(kind, path=None, channels=4, size=8, num_classes=10):
    return load_spec(tiny_spec(model__input={"channels": channels, "size": size}, model__num_classes=num_classes,
                               train={"data": {"kind": kind, "path": None if path is None else str(path)}}))


def shard(path, n=5, c=4, s=8, dtype=torch.float16, labels=None):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, c, s, s, generator=g).to(dtype)
    y = torch.arange(n) % 10 if labels is None else labels
    save_file({"latents": x, "labels": y}, str(path))
    return x, y


def test_digits_default_is_resized_scaled_and_labelled():
    d = load_data(spec_for("digits", channels=1, size=16))
    assert d.x.shape == (1797, 1, 16, 16) and d.y.shape == (1797,)
    assert d.x.min() >= -1 and d.x.max() <= 1 and d.x.min() < -0.99 and d.x.max() > 0.9
    assert sorted(d.y.unique().tolist()) == list(range(10))
    # 8x8 stays as scikit-learn has it: value v in 0..16 becomes v / 8 - 1
    from sklearn.datasets import load_digits as sk

    d8 = load_digits(3, 8)
    assert d8.x.shape == (1797, 3, 8, 8)
    assert torch.allclose(d8.x[5, 2], torch.from_numpy(sk().images[5]).float() / 8 - 1)


def test_digits_need_ten_classes():
    with pytest.raises(DataError, match=r"labels span 0..9 but model.num_classes is 5"):
        load_data(spec_for("digits", channels=1, num_classes=5))


def test_latent_shards_safetensors_keep_dtype_and_concatenate(tmp_path):
    x1, y1 = shard(tmp_path / "a.safetensors", 5)
    x2, y2 = shard(tmp_path / "b.safetensors", 3)
    d = load_data(spec_for("latents", tmp_path))
    assert d.x.dtype == torch.float16 and len(d) == 8
    assert torch.equal(d.x, torch.cat([x1, x2])) and torch.equal(d.y, torch.cat([y1, y2]))
    xb, yb = d.batch(torch.tensor([6, 0]), "cpu")
    assert xb.dtype == torch.float32 and torch.equal(xb, torch.stack([x2[1], x1[0]]).float())
    assert yb.tolist() == [y2[1].item(), y1[0].item()]


def test_latent_npz_and_fastdit_npy_pairs(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "s0.npz", latents=x, labels=np.array([1, 2, 3, 4]))
    d = load_data(spec_for("latents", tmp_path))
    assert np.array_equal(d.x.numpy(), x) and d.y.tolist() == [1, 2, 3, 4]
    fd = tmp_path / "fastdit"
    (fd / "features").mkdir(parents=True)
    (fd / "labels").mkdir()
    for i in range(3):  # fast-DiT writes one (1, C, H, W) file per image
        np.save(fd / "features" / f"{i}.npy", x[i : i + 1])
        np.save(fd / "labels" / f"{i}.npy", np.array([i + 5]))
    d = load_data(spec_for("latents", fd))
    assert np.array_equal(d.x.numpy(), x[:3]) and d.y.tolist() == [5, 6, 7]


def test_image_folder(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 12), (100 * c, 50, 10 * i)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    d = load_data(spec_for("images", tmp_path, channels=3, size=8))
    assert d.x.shape == (4, 3, 8, 8) and d.x.dtype == torch.uint8 and d.y.tolist() == [0, 0, 1, 1]
    xb, _ = d.batch(torch.tensor([2]), "cpu")
    assert torch.allclose(xb[0, 0], torch.full((8, 8), 100 / 127.5 - 1))


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, r"does not exist"),
    (lambda p: p.mkdir(), r"no latent shards"),
    (lambda p: (p.mkdir(), (p / "bad.safetensors").write_bytes(b"\x00garbage" * 10)), r"bad.safetensors: cannot read the shard.*corrupt"),
    (lambda p: (p.mkdir(), (p / "bad.npz").write_bytes(b"PK\x03\x04 truncated")), r"bad.npz: cannot read the shard"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors", c=3)), r"shape \(3, 8, 8\).*wants \(4, 8, 8\).*channels differ"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors", s=16)), r"shape \(4, 16, 16\).*wants \(4, 8, 8\).*size differ"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors", dtype=torch.int32)), r"latents have dtype torch.int32"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors", labels=torch.tensor([0, 1, 2, 3, 10]))), r"labels span 0..10 .* 0..9"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors", labels=torch.tensor([0, 1]))), r"labels have shape \(2,\); expected \(5,\)"),
    (lambda p: (p.mkdir(), save_file({"x": torch.zeros(2)}, str(p / "a.safetensors"))), r"must hold tensors 'latents'"),
    (lambda p: (p.mkdir(), shard(p / "a.safetensors"), shard(p / "b.safetensors", s=4)), r"b.safetensors: latents of shape \(4, 4, 4\) differ"),
])
def test_latent_errors(tmp_path, setup, match):
    p = tmp_path / "lat"
    setup(p)
    with pytest.raises(DataError, match=match):
        load_data(spec_for("latents", p))


def test_latent_nan_rejected(tmp_path):
    x = torch.zeros(2, 4, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    save_file({"latents": x, "labels": torch.tensor([0, 1])}, str(tmp_path / "a.safetensors"))
    with pytest.raises(DataError, match="NaN or inf"):
        load_data(spec_for("latents", tmp_path))


def test_data_path_required_and_image_errors(tmp_path):
    with pytest.raises(DataError, match=r"needs a folder path"):
        load_data(spec_for("latents"))
    with pytest.raises(DataError, match=r"no class sub-folders"):
        load_data(spec_for("images", tmp_path, channels=3))
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=r"hold no images"):
        load_data(spec_for("images", tmp_path, channels=3))
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"x.png: cannot read the image"):
        load_data(spec_for("images", tmp_path, channels=3))
    with pytest.raises(DataError, match=r"1 \(grey\) or 3 \(RGB\).*asks for 4"):
        load_data(spec_for("images", tmp_path, channels=4))


def test_stream_is_a_function_of_the_cursor():
    s = Stream(7, seed=3)
    whole = s.take(0, 30)
    assert torch.equal(torch.cat([Stream(7, 3).take(0, 11), Stream(7, 3).take(11, 19)]), whole)
    for e in range(4):  # each epoch is a permutation
        assert sorted(whole[7 * e : 7 * e + 7].tolist()) == list(range(7))
    assert not torch.equal(whole[:7], whole[7:14])
    assert not torch.equal(Stream(7, 4).take(0, 7), whole[:7])
