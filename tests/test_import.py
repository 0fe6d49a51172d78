import json
import subprocess
import sys


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = ["onnxruntime", "ncnn", "pnnx", "tensorrt", "torch_pruning", "onnx", "onnxscript"]


def test_import_is_light():
    r = _run(
        "import sys, json, edgecompress as ec; "
        "assert ec.__version__; "
        f"print(json.dumps([m for m in {HEAVY!r} + ['torch'] if m in sys.modules]))"
    )
    assert r == []


def test_api_access_loads_no_backend_and_no_cuda():
    r = _run(
        "import sys, json, edgecompress as ec; ec.compress; ec.PruneConfig; ec.list_targets(); "
        "import torch; "
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
        "'cuda': torch.cuda.is_initialized()}))"
    )
    assert r["cuda"] is False
    assert not set(r["heavy"]) & {"onnxruntime", "ncnn", "pnnx", "tensorrt"}, r["heavy"]


def test_version_in_one_place():
    import tomllib
    from pathlib import Path

    import edgecompress

    py = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" in py["project"]["dynamic"] and "version" not in py["project"]
    assert edgecompress.__version__.count(".") == 2
