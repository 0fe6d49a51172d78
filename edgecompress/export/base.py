"""Shared exporter machinery: config, atomic export, validation against PyTorch."""

from __future__ import annotations

import abc
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import ConfigError, ExportError, OutputMatchError
from edgecompress.utils import sqnr_db

Runner = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class ExportConfig(Config):
    """precision: fp32 (this release). atol: max |artifact - torch| allowed on validation;
    min_agreement: top-1 agreement (0..1) required; threads: runtime threads for validation/latency."""

    precision: str = "fp32"
    opset: int = 20
    atol: float = 1e-4
    min_agreement: float = 1.0
    threads: int = 1

    def validate(self) -> None:
        n = type(self).__name__
        check_choice(n, "precision", self.precision, {"fp32"})
        check_range(n, "opset", self.opset, 13, 30)
        check_range(n, "atol", self.atol, 0, 1e3)
        check_range(n, "min_agreement", self.min_agreement, 0, 1)
        check_range(n, "threads", self.threads, 1, 1024)


@dataclasses.dataclass
class ValidationResult:
    artifact: str
    samples: int
    batch_size: int
    max_abs_diff: float
    sqnr_db: float
    top1_agreement: float
    atol: float
    min_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_agreement

    def failures(self) -> list[str]:
        out = []
        if not self.max_abs_diff <= self.atol:
            out.append(f"max abs diff {self.max_abs_diff:.3g} > atol {self.atol:g}")
        if self.top1_agreement < self.min_agreement:
            out.append(f"top-1 agreement {self.top1_agreement:.2%} < {self.min_agreement:.2%}")
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


class Exporter(abc.ABC):
    """One backend. Subclasses set ``name``, ``runtime`` and implement ``_export`` and ``load``."""

    name: str = ""
    runtime: str = ""

    def __init__(self, cfg: ExportConfig | None = None):
        self.cfg = cfg or ExportConfig()

    @abc.abstractmethod
    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        """Write the artifact files into ``workdir``; return {role: path}."""

    @abc.abstractmethod
    def load(self, paths: dict[str, Path]) -> Runner:
        """A callable running the artifact in its own runtime: float32 NCHW batch -> logits."""

    def require(self) -> None:
        """Raise BackendUnavailableError (with the pip command) when the backend is missing."""

    def export(self, model: nn.Module, example_inputs: tuple, out_dir: str | Path, stem: str = "model") -> dict[str, Path]:
        """Export into ``out_dir`` atomically: files are written to a temporary folder beside it and
        moved in only when all of them exist; on failure nothing is left behind."""
        self.require()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=out_dir))
        try:
            with torch.no_grad():
                paths = self._export(model, example_inputs, tmp)
            missing = [str(p) for p in paths.values() if not Path(p).is_file() or Path(p).stat().st_size == 0]
            if missing:
                raise ExportError(f"{self.name} exporter did not write {missing}")
            final = {}
            for role, p in paths.items():
                dest = out_dir / f"{stem}{_suffix(Path(p))}"
                Path(p).replace(dest)
                final[role] = dest
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def validate(self, model: nn.Module, paths: dict[str, Path], inputs: torch.Tensor, *,
                 batch_size: int = 64, reference: torch.Tensor | None = None, raise_on_fail: bool = True) -> ValidationResult:
        """Re-run the artifact on ``inputs`` (in batches unlike the traced one) and compare with
        PyTorch. Raises OutputMatchError listing each failure when ``raise_on_fail``."""
        run = self.load(paths)
        outs = []
        for s in range(0, len(inputs), batch_size):
            outs.append(torch.from_numpy(np.asarray(run(np.ascontiguousarray(inputs[s:s + batch_size].numpy())))))
        got = torch.cat(outs).float()
        if reference is None:
            with torch.no_grad():
                reference = model.eval()(inputs).float()
        if got.shape != reference.shape:
            raise OutputMatchError(self.name, [f"output shape {tuple(got.shape)} != torch {tuple(reference.shape)}"])
        res = ValidationResult(
            artifact=self.name, samples=len(inputs), batch_size=batch_size,
            max_abs_diff=(got - reference).abs().max().item(), sqnr_db=sqnr_db(reference, got),
            top1_agreement=(got.argmax(1) == reference.argmax(1)).float().mean().item(),
            atol=self.cfg.atol, min_agreement=self.cfg.min_agreement,
        )
        if raise_on_fail and not res.passed:
            raise OutputMatchError(self.name, res.failures())
        return res


def _suffix(p: Path) -> str:
    """'.ncnn.param' for 'x.ncnn.param', '.onnx' for 'x.onnx'."""
    parts = p.name.split(".")
    return "." + ".".join(parts[1:]) if len(parts) > 1 else ""


def _registry() -> dict[str, type[Exporter]]:
    from edgecompress.export.ncnn import NcnnExporter
    from edgecompress.export.onnx import OnnxExporter
    from edgecompress.export.torch_export import TorchExporter

    return {c.name: c for c in (OnnxExporter, NcnnExporter, TorchExporter)}


EXPORTERS = ("onnx", "ncnn", "torch")


def get_exporter(name: str, cfg: ExportConfig | None = None) -> Exporter:
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"unknown exporter {name!r}; known: {sorted(reg)}")
    return reg[name](cfg)
