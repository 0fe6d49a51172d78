import os
from pathlib import Path

import pytest


def cifar10_source() -> Path | None:
    p = os.environ.get("EDGECOMPRESS_CIFAR10")
    return Path(p) if p and Path(p).exists() else None


@pytest.fixture(scope="session")
def cifar10_path():
    p = cifar10_source()
    if p is None:
        pytest.skip("real CIFAR-10 not available: set EDGECOMPRESS_CIFAR10 to the archive")
    return p


@pytest.fixture(scope="session")
def cifar10(cifar10_path):
    from edgecompress.data import load_cifar10

    return load_cifar10(cifar10_path)


@pytest.fixture(scope="session", autouse=True)
def _temp_dir_inside_pytest(tmp_path_factory):
    """Temporary folders made in this process (compress() results without output_dir among them)
    go under pytest's own temp root, which pytest prunes, not into the system temp dir."""
    import tempfile

    prev = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = prev
