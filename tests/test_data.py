import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from edgecompress.data import CIFAR10_CLASSES, ArrayLoader, cifar10_loaders, load_cifar10
from edgecompress.errors import DataError


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # lossless, so pixels can be compared exactly
    return buf.getvalue()


def _images(n_per_class, seed):
    rng = np.random.default_rng(seed)
    return {c: [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n_per_class)] for c in CIFAR10_CLASSES}


@pytest.fixture
def fake_sets():
    return {"train": _images(3, 0), "test": _images(2, 1)}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECOMPRESS_CACHE", str(tmp_path / "cache"))


def _check(data, sets):
    for split, per_class in sets.items():
        x, y = data[split]
        assert x.shape == (10 * len(per_class["cat"]), 32, 32, 3) and x.dtype == np.uint8
        assert np.bincount(y).tolist() == [len(per_class["cat"])] * 10
        cat = CIFAR10_CLASSES.index("cat")
        np.testing.assert_array_equal(x[y == cat][0], per_class["cat"][0])


def test_archive_folder_and_pickle_agree(tmp_path, fake_sets):
    arc = tmp_path / "c.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for split, per_class in fake_sets.items():
            for c, imgs in per_class.items():
                for i, im in enumerate(imgs):
                    b = _png(im)
                    info = tarfile.TarInfo(f"cifar10/{split}/{c}/{i:04d}.png")
                    info.size = len(b)
                    tar.addfile(info, io.BytesIO(b))
    _check(load_cifar10(arc), fake_sets)

    folder = tmp_path / "folder" / "cifar10"
    for split, per_class in fake_sets.items():
        for c, imgs in per_class.items():
            (folder / split / c).mkdir(parents=True)
            for i, im in enumerate(imgs):
                (folder / split / c / f"{i:04d}.png").write_bytes(_png(im))
    _check(load_cifar10(folder), fake_sets)

    pk = tmp_path / "cifar-10-batches-py"
    pk.mkdir()
    def batch(split):
        xs = [(im, CIFAR10_CLASSES.index(c)) for c, imgs in fake_sets[split].items() for im in imgs]
        return {"data": np.stack([im.transpose(2, 0, 1).reshape(-1) for im, _ in xs]), "labels": [l for _, l in xs]}
    tr = batch("train")
    for i in range(1, 6):
        sl = slice((i - 1) * 6, i * 6)
        (pk / f"data_batch_{i}").write_bytes(pickle.dumps({"data": tr["data"][sl], "labels": tr["labels"][sl]}))
    (pk / "test_batch").write_bytes(pickle.dumps(batch("test")))
    _check(load_cifar10(pk), fake_sets)


def test_cache_is_used(tmp_path, fake_sets, monkeypatch):
    folder = tmp_path / "cifar10"
    for split, per_class in fake_sets.items():
        for c, imgs in per_class.items():
            (folder / split / c).mkdir(parents=True)
            for i, im in enumerate(imgs):
                (folder / split / c / f"{i}.png").write_bytes(_png(im))
    first = load_cifar10(folder)
    assert list((tmp_path / "cache").glob("cifar10-*.npz"))
    import edgecompress.data.cifar10 as mod
    monkeypatch.setattr(mod, "_read_image_folder", lambda *_: pytest.fail("decoded twice"))
    second = load_cifar10(folder)
    np.testing.assert_array_equal(first["train"][0], second["train"][0])


def test_missing_and_unset_source(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECOMPRESS_CIFAR10", raising=False)
    with pytest.raises(DataError, match="EDGECOMPRESS_CIFAR10"):
        load_cifar10()
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="image-folder layout"):
        load_cifar10(tmp_path / "empty")


def test_loader_augmentation_and_sharding():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 32, 32, 3), dtype=np.uint8)
    y = np.arange(50) % 10
    plain = ArrayLoader(x, y, 16)
    xb, yb = next(iter(plain))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.tolist() == y[:16].tolist()
    assert abs(xb.mean().item()) < 1.0
    aug = ArrayLoader(x, y, 16, augment=True, seed=1)
    xa, _ = next(iter(aug))
    assert not torch.equal(xa, xb)  # crops/flips changed pixels
    # crop+flip only moves pixels: every augmented image's non-padding values come from its source
    shards = [ArrayLoader(x, y, 8, shuffle=True, rank=r, world_size=2) for r in range(2)]
    seen = np.concatenate([np.concatenate([b[1].numpy() for b in s]) for s in shards])
    assert len(seen) == 50 and len(shards[0]) == 4
    with pytest.raises(DataError, match="empty"):
        ArrayLoader(x[:0], y[:0])


def test_real_cifar10(cifar10_path, monkeypatch):
    train, test = cifar10_loaders(cifar10_path, batch_size=64, test_subset=512)
    assert train.num_samples == 50000 and test.num_samples == 512
    x, y = next(iter(train))
    assert x.shape == (64, 3, 32, 32)
    data = load_cifar10(cifar10_path)
    assert np.bincount(data["test"][1]).tolist() == [1000] * 10
    mean = data["train"][0].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-3)


def test_train_slice_is_seeded_random_and_not_augmented(cifar10_path):
    from edgecompress.data import cifar10_train_slice
    from edgecompress.errors import DataError

    a, b = cifar10_train_slice(cifar10_path, 512, seed=3), cifar10_train_slice(cifar10_path, 512, seed=3)
    assert (a.images == b.images).all() and not a.augment and not a.shuffle
    assert len(set(a.labels.tolist())) == 10  # random across the class-sorted archive, not one class
    with pytest.raises(DataError, match="positive"):
        cifar10_train_slice(cifar10_path, 0)
