"""The ``torch`` target: a torch.export program (``.pt2``, dynamic batch), re-loaded to validate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecompress.errors import ExportError
from edgecompress.export.base import Exporter, Runner


class TorchExporter(Exporter):
    name = "torch"
    runtime = "torch"

    def _export(self, model: nn.Module, example_inputs: tuple, workdir: Path) -> dict[str, Path]:
        x = example_inputs[0]
        if x.shape[0] < 2:
            x = x.expand(2, *x.shape[1:]).contiguous()
        try:
            ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"torch.export failed: {e}") from e
        path = workdir / "model.pt2"
        torch.export.save(ep, str(path))
        return {"pt2": path}

    def load(self, paths: dict[str, Path]) -> Runner:
        mod = load_program(paths["pt2"])

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return mod(torch.from_numpy(x)).numpy()

        return run


def load_program(path: str | Path) -> nn.Module:
    """The module of a saved torch.export program; edgecompress's kernel ops are registered first
    when the program uses them."""
    try:
        prog = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - a program using edgecompress's kernel ops needs them registered
        if "edgecompress" not in str(e):
            raise
        from edgecompress.kernels import ops

        ops.load()
        prog = torch.export.load(str(path))
    return prog.module()
