"""The ``tensorrt`` / ``tensorrt-int8`` exporters: an fp16 or TensorRT-ready int8 QDQ ONNX, and the
engine built from it where TensorRT and a GPU exist (``edgecompress.export.tensorrt``)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch.nn as nn

from edgecompress.export.base import Exporter, Runner
from edgecompress.export.tensorrt import build_engine, is_tensorrt_available, load_engine, tensorrt_unavailable_reason


class TensorRTExporter(Exporter):
    """A TensorRT engine built from the fp16 ONNX (``tensorrt``) or the TensorRT-ready int8 QDQ
    ONNX (``tensorrt-int8``). Without TensorRT or a GPU the ONNX is still written and validated in
    onnxruntime, and ``notes()`` says that the engine step was skipped and why."""

    runtime = "tensorrt"
    precisions = ("fp16", "int8")
    contract = "tensorrt"

    def require(self) -> None:
        from edgecompress.export.onnx import OnnxExporter

        OnnxExporter().require()

    def _onnx_exporter(self):
        from edgecompress.export.onnx import OnnxExporter, OnnxTensorRTInt8Exporter

        if self.int8:
            return OnnxTensorRTInt8Exporter(dataclasses.replace(self.cfg, precision="int8"), name="onnx-int8-trt")
        return OnnxExporter(dataclasses.replace(self.cfg, precision="fp16"), name="onnx-fp16")

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        paths = dict(self._onnx_exporter()._export(model, example_inputs, workdir))
        self.skipped = None if is_tensorrt_available() else tensorrt_unavailable_reason()
        if self.skipped is None:
            engine = workdir / f"model.{self.cfg.precision}.engine"
            build_engine(paths["onnx"], engine, max_batch=max(64, int(example_inputs[0].shape[0])))
            paths["engine"] = engine
        else:
            warnings.warn(f"TensorRT engine not built: {self.skipped}; the TensorRT-ready ONNX is written and "
                          "validated in onnxruntime instead", UserWarning, stacklevel=3)
        return paths

    def load(self, paths: dict[str, Path]) -> Runner:
        if "engine" in paths:
            return load_engine(paths["engine"])
        return self._onnx_exporter().load(paths)

    def notes(self) -> dict:
        skipped = getattr(self, "skipped", None)
        return {"engine": "skipped: " + skipped if skipped else "built",
                "validated_in": "onnxruntime (TensorRT-ready ONNX)" if skipped else "tensorrt"}
