"""Peak-memory probe run in a fresh process by ``edgecompress.bench.harness.peak_memory_mb``:
``python -m edgecompress.bench.peakmem SPEC_JSON`` prints {"peak_mem_mb": ...}."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from edgecompress.bench.artifacts import Artifact


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so
    the import spike of torch does not hide what loading and running the model needs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(spec: dict) -> dict:
    x = np.load(spec["input"])
    base = _status_mb("VmRSS") if _reset_peak() else _peak_mb()
    module = torch.load(spec["module"], weights_only=False) if spec.get("module") else None
    a = Artifact("probe", spec["exporter"], {k: Path(v) for k, v in spec["paths"].items()}, module=module)
    fn, setup = a.runner(spec["threads"], spec.get("device", "cpu"))
    for _ in range(max(1, spec.get("warmup", 10))):
        if setup:
            setup()
        fn(x)
    return {"peak_mem_mb": round(_peak_mb() - base, 2), "baseline_mb": round(base, 2)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
