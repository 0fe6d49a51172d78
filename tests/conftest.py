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
