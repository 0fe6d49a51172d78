"""ONNX fp32 export (torch.onnx dynamo exporter, dynamic batch) verified in onnxruntime."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import BackendUnavailableError, ExportError
from edgecompress.export.base import Exporter, Runner

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def is_onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def ort_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads and no spinning (so it does not
    slow whatever is timed next in the same process)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxExporter(Exporter):
    name = "onnx"
    runtime = "onnxruntime"

    def require(self) -> None:
        for mod, pkg in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
            if importlib.util.find_spec(mod) is None:
                raise BackendUnavailableError(f"{mod} is not installed; pip install {pkg}")

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        import onnx

        x = example_inputs[0]
        # Trace with batch >= 2: a batch of 1 lets torch.export specialise the batch dimension.
        if x.shape[0] < 2:
            x = x.expand(2, *x.shape[1:]).contiguous()
        path = workdir / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model, (x,), str(path), dynamo=True, opset_version=self.cfg.opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True, verbose=False,
                    external_data=False,
                )
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"torch.onnx.export failed: {e}") from e
        onnx.checker.check_model(str(path), full_check=True)
        return {"onnx": path}

    def load(self, paths: dict[str, Path]) -> Runner:
        sess = ort_session(paths["onnx"], self.cfg.threads)
        return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
