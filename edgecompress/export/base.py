"""Shared exporter machinery: config, atomic export, validation against PyTorch."""

from __future__ import annotations

import abc
import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from edgecompress.config import Config, check_choice, check_range
from edgecompress.errors import ConfigError, ExportError, OutputDirError, OutputMatchError
from edgecompress.utils import sqnr_db

Runner = Callable[[np.ndarray], np.ndarray]
INPUT_NAME, OUTPUT_NAME = "input", "logits"


# Default tolerances by precision: (max |artifact - reference|, top-1 agreement, SQNR in dB). fp16
# is compared with the model whose weights are rounded to fp16 (what the artifact stores); int8 with
# our int8 simulation of the backend's contract, where agreement and SQNR (not the max diff: one
# code flipped at a rounding boundary moves a logit by a quantization step) are the gates.
DEFAULT_TOLERANCES = {"fp32": (1e-4, 1.0, 0.0), "fp16": (5e-2, 0.98, 30.0), "int8": (float("inf"), 0.99, 20.0)}


@dataclasses.dataclass
class ExportConfig(Config):
    """precision: fp32 | fp16 | int8 (set by the exporter's name: ``onnx-fp16``, ``ncnn-int8``...).
    opset: ONNX opset. dynamic_batch: ONNX/TensorRT artifacts take any batch size (ncnn has no
    batch axis; it runs one image at a time). atol: max |artifact - reference| allowed on
    validation, min_agreement: top-1 agreement (0..1) required; None takes the precision's
    default (``DEFAULT_TOLERANCES``). threads: runtime threads for validation/latency."""

    precision: str = "fp32"
    opset: int = 20
    dynamic_batch: bool = True
    atol: float | None = None
    min_agreement: float | None = None
    min_sqnr_db: float | None = None
    threads: int = 1

    def validate(self) -> None:
        n = type(self).__name__
        check_choice(n, "precision", self.precision, set(DEFAULT_TOLERANCES))
        check_range(n, "opset", self.opset, 13, 30)
        if self.atol is not None:
            check_range(n, "atol", self.atol, 0, float("inf"))
        if self.min_agreement is not None:
            check_range(n, "min_agreement", self.min_agreement, 0, 1)
        if self.min_sqnr_db is not None:
            check_range(n, "min_sqnr_db", self.min_sqnr_db, 0, 1000)
        check_range(n, "threads", self.threads, 1, 1024)

    def tolerances(self) -> tuple[float, float, float]:
        atol, agree, sqnr = DEFAULT_TOLERANCES[self.precision]
        return ((atol if self.atol is None else self.atol), (agree if self.min_agreement is None else self.min_agreement),
                (sqnr if self.min_sqnr_db is None else self.min_sqnr_db))


@dataclasses.dataclass
class ValidationResult:
    """The artifact against its reference (``reference``: the float model, the fp16-rounded model
    or the int8 simulation) on held-out inputs; for int8 also against the float model."""

    artifact: str
    reference: str
    output: str
    samples: int
    batch_size: int
    max_abs_diff: float
    sqnr_db: float
    top1_agreement: float
    atol: float
    min_agreement: float
    min_sqnr_db: float = 0.0
    vs_float: dict | None = None
    first_diverging_layer: dict | None = None
    top1: float | None = None  # the artifact's accuracy, when labels were given
    reference_top1: float | None = None  # the reference's (e.g. the int8 simulation's), same labels

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_agreement
                and self.sqnr_db >= self.min_sqnr_db)

    def failures(self) -> list[str]:
        out = []
        if not self.max_abs_diff <= self.atol:
            out.append(f"output {self.output!r}: max abs diff {self.max_abs_diff:.3g} > atol {self.atol:g} "
                       f"(vs {self.reference}, SQNR {self.sqnr_db:.1f} dB)")
        if self.top1_agreement < self.min_agreement:
            out.append(f"output {self.output!r}: top-1 agreement {self.top1_agreement:.2%} < {self.min_agreement:.2%} "
                       f"(vs {self.reference}, max abs diff {self.max_abs_diff:.3g})")
        if self.sqnr_db < self.min_sqnr_db:
            out.append(f"output {self.output!r}: SQNR {self.sqnr_db:.1f} dB < {self.min_sqnr_db:g} dB "
                       f"(vs {self.reference}, max abs diff {self.max_abs_diff:.3g})")
        if out and self.first_diverging_layer:
            d = self.first_diverging_layer
            out.append(f"first diverging layer {d['layer']!r} (torch {d['torch_layer']!r}): max abs diff "
                       f"{d['max_abs_diff']:.3g} ({d['max_rel_diff']:.2%} of its output range)")
        return out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


class Exporter(abc.ABC):
    """One backend at one precision. Subclasses set ``runtime`` and ``precisions`` and implement
    ``_export`` and ``load``; int8 exporters take the model quantized by ``quantize_`` under
    ``contract`` and are validated against its simulation."""

    runtime: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    contract: str | None = None  # int8: the quantize_ contract the scales must come from

    def __init__(self, cfg: ExportConfig | None = None, name: str | None = None):
        self.cfg = cfg or ExportConfig()
        self.name = name or self.runtime
        if self.cfg.precision not in self.precisions:
            raise ConfigError(f"the {self.runtime} exporter writes {list(self.precisions)}, not {self.cfg.precision!r}; "
                              f"use one of the exporters {sorted(EXPORTERS)}")

    @property
    def int8(self) -> bool:
        return self.cfg.precision == "int8"

    @abc.abstractmethod
    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        """Write the artifact files into ``workdir``; return {role: path}."""

    @abc.abstractmethod
    def load(self, paths: dict[str, Path]) -> Runner:
        """A callable running the artifact in its own runtime: float32 NCHW batch -> logits."""

    def require(self) -> None:
        """Raise BackendUnavailableError (with the pip command) when the backend is missing."""

    def locate(self, model: nn.Module, paths: dict[str, Path], inputs: torch.Tensor) -> dict | None:
        """The first layer whose output in the runtime departs from PyTorch (int8 exporters that can
        read intermediate tensors), or None."""
        return None

    def notes(self) -> dict:
        """Extra facts for the report about the last export (layers kept float, steps skipped)."""
        return {}

    def check_model(self, model: nn.Module) -> None:
        """int8: the model must carry fake-quant layers under this exporter's contract."""
        if not self.int8:
            return
        from edgecompress.quantize.ptq import quant_layers

        layers = quant_layers(model)
        if not layers:
            raise ConfigError(f"{self.name} writes int8 from edgecompress's scales: quantize the model first "
                              f"(edgecompress.quantize.quantize_(model, QuantConfig(), data, target={self.contract!r}))")
        bad = sorted({q.contract.name for q in layers.values() if q.enabled} - {self.contract})
        if bad:
            raise ConfigError(f"{self.name} needs scales under the {self.contract!r} contract, the model was quantized "
                              f"under {bad}; quantize it with target={self.contract!r}")

    def export(self, model: nn.Module, example_inputs: tuple, out_dir: str | Path, stem: str = "model") -> dict[str, Path]:
        """Export into ``out_dir`` atomically: files are written to a temporary folder beside it and
        moved in only when all of them exist; on failure nothing is left behind."""
        self.require()
        self.check_model(model)
        out_dir = Path(out_dir)
        if not out_dir.parent.exists():
            raise OutputDirError(f"cannot export into {out_dir}: its parent folder {out_dir.parent} does not exist; "
                                 "create it first")
        if not out_dir.parent.is_dir() or (out_dir.exists() and not out_dir.is_dir()):
            bad = out_dir if out_dir.exists() else out_dir.parent
            raise OutputDirError(f"cannot write into {out_dir}: {bad} is a file, not a folder; pass a folder path")
        try:
            out_dir.mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=out_dir))
        except OSError as e:
            raise OutputDirError(f"cannot write into {out_dir}: {e.strerror}; pass a writable output folder") from e
        model = model.eval()
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

    def reference(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, str]:
        """What the artifact should compute: the float model, the backend's fp16 storage simulated
        (``quantize.simulate_fp16_``), or the int8 simulation (a quantized model in eval mode runs the runtime's integer arithmetic)."""
        model = model.eval()
        if self.cfg.precision == "fp16":
            from edgecompress.quantize.fp16 import simulate_fp16_

            m = copy.deepcopy(model)
            target = "ncnn" if self.runtime == "ncnn" else "onnx"
            rep = simulate_fp16_(m, target)
            return _batched(m, inputs), f"fp16 simulation ({target}: {rep['rounded']} rounded to fp16)"
        if self.int8:
            return _batched(model, inputs), f"int8 simulation ({self.contract} contract)"
        return _batched(model, inputs), "torch fp32"

    def validate(self, model: nn.Module, paths: dict[str, Path], inputs: torch.Tensor, *,
                 batch_size: int = 64, reference: torch.Tensor | None = None, raise_on_fail: bool = True,
                 labels: torch.Tensor | None = None) -> ValidationResult:
        """Re-run the artifact on ``inputs`` (in batches unlike the traced one) and compare with the
        reference. Raises OutputMatchError listing each failure (and, where the runtime exposes
        intermediate tensors, the first layer that departs) when ``raise_on_fail``."""
        run = self.load(paths)
        outs = []
        for s in range(0, len(inputs), batch_size):
            outs.append(torch.from_numpy(np.asarray(run(np.ascontiguousarray(inputs[s:s + batch_size].numpy())))))
        got = torch.cat(outs).float()
        label = "torch"
        if reference is None:
            reference, label = self.reference(model, inputs)
        if got.shape != reference.shape:
            raise OutputMatchError(self.name, [f"output {OUTPUT_NAME!r}: shape {tuple(got.shape)} != torch {tuple(reference.shape)}"])
        atol, min_agree, min_sqnr = self.cfg.tolerances()
        res = ValidationResult(
            artifact=self.name, reference=label, output=OUTPUT_NAME, samples=len(inputs), batch_size=batch_size,
            max_abs_diff=(got - reference).abs().max().item(), sqnr_db=sqnr_db(reference, got),
            top1_agreement=_agreement(got, reference), atol=atol, min_agreement=min_agree, min_sqnr_db=min_sqnr,
        )
        if labels is not None:
            res.top1 = (got.argmax(1) == labels).float().mean().item()
            res.reference_top1 = (reference.argmax(1) == labels).float().mean().item()
        if self.int8:
            from edgecompress.quantize.ptq import set_quant_enabled_

            fmodel = set_quant_enabled_(copy.deepcopy(model).eval(), False)
            flt = _batched(fmodel, inputs)
            res.vs_float = {"max_abs_diff": (got - flt).abs().max().item(), "sqnr_db": sqnr_db(flt, got),
                            "top1_agreement": _agreement(got, flt)}
        if not res.passed:
            res.first_diverging_layer = self.locate(model, paths, inputs[: min(8, len(inputs))])
            if raise_on_fail:
                raise OutputMatchError(self.name, res.failures(), res.first_diverging_layer)
        return res


def _batched(model: nn.Module, inputs: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(inputs[s:s + batch_size]).float() for s in range(0, len(inputs), batch_size)])


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


def _suffix(p: Path) -> str:
    """'.ncnn.param' for 'x.ncnn.param', '.onnx' for 'x.onnx'."""
    parts = p.name.split(".")
    return "." + ".".join(parts[1:]) if len(parts) > 1 else ""


def _registry() -> dict[str, tuple[type[Exporter], str]]:
    from edgecompress.export.ncnn import NcnnExporter, NcnnInt8Exporter
    from edgecompress.export.onnx import OnnxExporter, OnnxInt8Exporter, OnnxTensorRTInt8Exporter
    from edgecompress.export.tensorrt_exporter import TensorRTExporter
    from edgecompress.export.torch_export import TorchExporter

    return {
        "onnx": (OnnxExporter, "fp32"), "onnx-fp16": (OnnxExporter, "fp16"), "onnx-int8": (OnnxInt8Exporter, "int8"),
        "onnx-int8-trt": (OnnxTensorRTInt8Exporter, "int8"),
        "ncnn": (NcnnExporter, "fp32"), "ncnn-fp16": (NcnnExporter, "fp16"), "ncnn-int8": (NcnnInt8Exporter, "int8"),
        "tensorrt": (TensorRTExporter, "fp16"), "tensorrt-int8": (TensorRTExporter, "int8"),
        "torch": (TorchExporter, "fp32"),
    }


EXPORTERS = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-trt", "ncnn", "ncnn-fp16", "ncnn-int8",
             "tensorrt", "tensorrt-int8", "torch")


def get_exporter(name: str, cfg: ExportConfig | None = None) -> Exporter:
    """The exporter ``name`` (see ``EXPORTERS``); its precision comes from the name."""
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"unknown exporter {name!r}; known: {sorted(reg)}")
    cls, precision = reg[name]
    return cls(dataclasses.replace(cfg or ExportConfig(), precision=precision), name=name)
