"""Data loading: CIFAR-10 from the JPEG image-folder archive, a folder, or the official pickles."""

from edgecompress.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ArrayLoader,
    cifar10_loaders,
    cifar10_train_slice,
    load_cifar10,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ArrayLoader",
    "cifar10_loaders",
    "cifar10_train_slice",
    "load_cifar10",
]
