"""Typed errors. Every error names what was wrong and how to fix it."""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class of every error raised by edgecompress."""


class ConfigError(EdgeCompressError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class UnknownTargetError(ConfigError):
    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, sorted(known)
        super().__init__(f"{name!r}; known targets: {', '.join(self.known)}")


class UnknownModelError(ConfigError):
    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, sorted(known)
        super().__init__(f"{name!r}; known models: {', '.join(self.known)}")


class ModelInputError(EdgeCompressError, ValueError):
    """The model does not accept the example inputs it was given."""


class DataError(EdgeCompressError, ValueError):
    """Training/validation data is missing, empty or malformed."""


class OutputDirError(EdgeCompressError, OSError):
    """The output directory cannot be created or written."""


class BackendUnavailableError(EdgeCompressError, ImportError):
    """An optional backend (onnxruntime, ncnn, pnnx, tensorrt) is not installed."""


class ExportError(EdgeCompressError, RuntimeError):
    """An exporter failed to produce its artifact."""


class OutputMatchError(EdgeCompressError, ValueError):
    """An exported artifact's outputs differ from the PyTorch reference beyond tolerance."""

    def __init__(self, artifact: str, failures: list[str], layer: dict | None = None):
        self.artifact, self.failures, self.layer = artifact, failures, layer
        super().__init__(f"{artifact} does not match PyTorch: " + "; ".join(failures))


class PruningError(EdgeCompressError, RuntimeError):
    """A pruning step could not be applied."""


class CheckpointError(EdgeCompressError, RuntimeError):
    """A checkpoint cannot be loaded into this model."""


class ArtifactNotFoundError(EdgeCompressError, FileNotFoundError):
    """An artifact (or a file it needs) does not exist."""


class DeviceUnavailableError(EdgeCompressError, RuntimeError):
    """The device asked for (a CUDA GPU, an Android phone over adb) cannot be used here."""


class PackagingError(EdgeCompressError, ValueError):
    """A model cannot be packaged into the Android app as asked."""


class UnsafePathError(PackagingError):
    """A path would be written outside the folder it belongs in."""


class AdbError(EdgeCompressError, RuntimeError):
    """adb failed while talking to an Android device."""


class DeviceDisconnectedError(AdbError):
    """The Android device went away (unplugged, offline) during a run."""


class DeviceUnauthorizedError(AdbError):
    """The Android device has not authorised this computer for USB debugging."""


class HostToolError(EdgeCompressError, RuntimeError):
    """The Android demo's host tool failed to build, or rejected its input; the message is the tool's own."""
