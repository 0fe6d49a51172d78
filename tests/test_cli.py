import json
import subprocess
import sys

import pytest


def run(*args, check=True):
    return subprocess.run([sys.executable, "-m", "edgecompress.cli", *args], capture_output=True, text=True,
                          check=check)


def test_env_reports_every_backend():
    info = json.loads(run("env", "--json").stdout)
    for name in ("torch", "onnxruntime", "ncnn", "pnnx", "onnx", "tensorrt"):
        assert name in info["backends"]
    assert info["backends"]["onnxruntime"]["status"].startswith("usable")
    assert info["backends"]["ncnn"]["status"].startswith("usable")
    assert info["backends"]["pnnx"]["status"].startswith("usable")


def test_targets_and_models():
    assert run("targets").stdout.split("\n")[0].startswith("ncnn")
    assert "resnet20" in run("models", "resnet*").stdout.split()


@pytest.mark.parametrize("cmd", ["demo", "compress"])
def test_unknown_target_exits_2_with_the_fix(cmd):
    p = run(cmd, "--target", "ncnx", check=False)
    assert p.returncode == 2
    assert "UnknownTargetError: 'ncnx'; known targets: ncnn, onnx, torch" in p.stderr
