"""CIFAR-10 loader.

Reads any of:
  * the image-folder archive ``cifar10-jpeg.tar.gz`` (``cifar10/{train,test}/<class>/<n>.jpg``),
  * a folder of the same layout (``<root>/{train,test}/<class>/*.jpg|png``),
  * the official python-pickle release (``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``),
    which ``download=True`` fetches through torchvision for users who have internet.

Images are decoded once and cached as uint8 arrays in ``$EDGECOMPRESS_CACHE`` (default
``~/.cache/edgecompress``), keyed by the source's path, size and mtime.

>>> train, test = cifar10_loaders("path/to/cifar10-jpeg.tar.gz", batch_size=128)  # doctest: +SKIP
>>> x, y = next(iter(train)); x.shape
torch.Size([128, 3, 32, 32])
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from edgecompress.errors import DataError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
ENV_VAR = "EDGECOMPRESS_CIFAR10"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def resolve_cifar10_path(path: str | os.PathLike | None = None) -> Path:
    """The data source: ``path`` if given, else ``$EDGECOMPRESS_CIFAR10``."""
    if path is None:
        path = os.environ.get(ENV_VAR)
    if not path:
        raise DataError(
            f"no CIFAR-10 source given: pass a path (archive, folder or cifar-10-batches-py) "
            f"or set {ENV_VAR}=/path/to/cifar10-jpeg.tar.gz"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"CIFAR-10 source {p} does not exist; point {ENV_VAR} or the path argument at it")
    return p


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE", Path.home() / ".cache" / "edgecompress"))


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise DataError(f"expected 32x32 RGB CIFAR images, got shape {arr.shape}")
    return arr


def _split_class(name: str) -> tuple[str, str] | None:
    """'cifar10/train/cat/0001.jpg' -> ('train', 'cat'); None for other members."""
    parts = Path(name).parts
    if len(parts) < 3 or not name.lower().endswith(_IMAGE_SUFFIXES):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test"):
        return None
    return split, cls


def _collect(items: list[tuple[str, str, str, bytes | Path]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """items: (split, class, sortkey, blob or path) -> {split: (images NHWC uint8, labels int64)}."""
    classes = sorted({c for _, c, _, _ in items})
    if tuple(classes) != CIFAR10_CLASSES:
        raise DataError(f"expected the 10 CIFAR-10 class folders {CIFAR10_CLASSES}, found {classes}")
    out = {}
    for split in ("train", "test"):
        sel = sorted((it for it in items if it[0] == split), key=lambda it: (it[1], it[2]))
        if not sel:
            raise DataError(f"the CIFAR-10 source has no '{split}' images")
        imgs = np.stack([_decode(b if isinstance(b, bytes) else Path(b).read_bytes()) for _, _, _, b in sel])
        labels = np.array([classes.index(c) for _, c, _, _ in sel], dtype=np.int64)
        out[split] = (imgs, labels)
    return out


def _read_image_archive(path: Path) -> dict:
    items = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            key = _split_class(m.name) if m.isfile() else None
            if key:
                items.append((*key, m.name, tar.extractfile(m).read()))
    if not items:
        raise DataError(f"{path} holds no <split>/<class>/<image> members; is it the CIFAR-10 image archive?")
    return _collect(items)


def _read_image_folder(root: Path) -> dict:
    items = []
    for f in root.rglob("*"):
        key = _split_class(str(f.relative_to(root.parent)))
        if key and f.is_file():
            items.append((*key, str(f), f))
    if not items:
        raise DataError(f"{root} holds no train/<class>/*.jpg images; expected the CIFAR-10 image-folder layout")
    return _collect(items)


def _unpickle_batches(read) -> dict:
    def load(name):
        d = pickle.loads(read(name), encoding="latin1")
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d["labels"], dtype=np.int64)

    tr = [load(f"data_batch_{i}") for i in range(1, 6)]
    return {
        "train": (np.concatenate([t[0] for t in tr]), np.concatenate([t[1] for t in tr])),
        "test": load("test_batch"),
    }


def _read_pickles(path: Path) -> dict:
    if path.is_dir():
        d = path if (path / "data_batch_1").exists() else path / "cifar-10-batches-py"
        return _unpickle_batches(lambda n: (d / n).read_bytes())
    with tarfile.open(path, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar if m.isfile()}
        return _unpickle_batches(lambda n: tar.extractfile(members[n]).read())


def _is_pickle_source(path: Path) -> bool:
    if path.is_dir():
        return (path / "data_batch_1").exists() or (path / "cifar-10-batches-py" / "data_batch_1").exists()
    return "python" in path.name


def load_cifar10(
    path: str | os.PathLike | None = None, *, download: bool = False, cache: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decoded CIFAR-10 as ``{"train": (x, y), "test": (x, y)}``, x uint8 NHWC, y int64.

    ``download=True`` (needs internet) fetches the official pickles into the cache via torchvision.
    """
    if download and path is None and not os.environ.get(ENV_VAR):
        import torchvision

        root = _cache_dir() / "download"
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        path = root / "cifar-10-batches-py"
    src = resolve_cifar10_path(path)
    st = src.stat()
    key = hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cfile = _cache_dir() / f"cifar10-{key}.npz"
    if cache and cfile.exists():
        with np.load(cfile) as z:
            return {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "test")}
    if _is_pickle_source(src):
        data = _read_pickles(src)
    elif src.is_dir():
        data = _read_image_folder(src)
    else:
        data = _read_image_archive(src)
    if cache:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfile.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"{s}_{k}": v for s, xy in data.items() for k, v in zip("xy", xy)})
        os.replace(tmp, cfile)
    return data


class ArrayLoader:
    """Batches of normalised float tensors from uint8 NHWC arrays, augmented on the fly.

    Iterable of ``(x, y)`` with x float32 NCHW; reshuffles each epoch (``set_epoch`` for
    determinism across processes); ``rank``/``world_size`` shard it for distributed training
    (every rank takes every world_size-th sample of the same permutation; ``pad`` repeats samples
    so that all shards are equally long, on by default when shuffling).
    Augmentation: random crop with 4-pixel zero padding and horizontal flip.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        rank: int = 0,
        world_size: int = 1,
        pad: bool | None = None,
    ):
        if len(images) == 0:
            raise DataError("the data set is empty; pass at least one image")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, rank, world_size
        self.pad = shuffle if pad is None else pad  # equal shard sizes (training); exact shards (evaluation)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        n = len(self.images)
        idx = np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            if self.pad:
                idx = np.resize(idx, -(-n // self.world_size) * self.world_size)
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self._indices())

    def _augment(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, h, w, _ = batch.shape
        padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
        oy, ox = rng.integers(0, 9, b), rng.integers(0, 9, b)
        flip = rng.random(b) < 0.5
        out = np.empty_like(batch)
        for i in range(b):
            crop = padded[i, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
            out[i] = crop[:, ::-1] if flip[i] else crop
        return out

    def __iter__(self):
        idx = self._indices()
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, 1))
        stop = len(idx) - (len(idx) % self.batch_size if self.drop_last else 0)
        for s in range(0, stop, self.batch_size):
            sel = idx[s : s + self.batch_size]
            batch = self.images[sel]
            if self.augment:
                batch = self._augment(batch, rng)
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
            yield (x - self.mean) / self.std, torch.from_numpy(self.labels[sel])


def cifar10_loaders(
    path: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    eval_batch_size: int = 512,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    download: bool = False,
) -> tuple[ArrayLoader, ArrayLoader]:
    """(train loader with augmentation + shuffling, test loader) for CIFAR-10.

    ``*_subset`` take a seeded random subset of that many images.
    """
    data = load_cifar10(path, download=download)

    def subset(x, y, n):
        if n is None or n >= len(x):
            return x, y
        if n <= 0:
            raise DataError(f"subset size must be positive, got {n}")
        sel = np.random.default_rng(seed).permutation(len(x))[:n]
        return x[np.sort(sel)], y[np.sort(sel)]

    tx, ty = subset(*data["train"], train_subset)
    vx, vy = subset(*data["test"], test_subset)
    train = ArrayLoader(tx, ty, batch_size, shuffle=True, augment=True, drop_last=True, seed=seed,
                        rank=rank, world_size=world_size)
    test = ArrayLoader(vx, vy, eval_batch_size, rank=rank, world_size=world_size)
    return train, test


def cifar10_train_slice(path: str | os.PathLike | None = None, n: int = 1024, *, seed: int = 0,
                        batch_size: int = 128) -> ArrayLoader:
    """``n`` training images drawn at random (``torch.randperm`` seeded with ``seed``), in order, no
    augmentation: calibration and search data. Random, because the archive's training split is
    sorted by class."""
    if n <= 0:
        raise DataError(f"slice size must be positive, got {n}")
    xs, ys = load_cifar10(path)["train"]
    idx = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:n].numpy()
    return ArrayLoader(xs[idx], ys[idx], batch_size)
