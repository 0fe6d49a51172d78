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
    assert "UnknownTargetError: 'ncnx'; known targets: ncnn, ncnn-fp16, ncnn-int8, onnx, onnx-fp16" in p.stderr


def test_prune_command_writes_weights_plan_and_report(tmp_path):
    import torch
    from safetensors.torch import load_file

    from edgecompress.models import create_model, load_pretrained
    from edgecompress.prune import apply_plan, load_plan

    p = run("prune", "--model", "resnet20", "--method", "fpgm", "--ratio", "0.5", "--round-to", "8",
            "--out", str(tmp_path))
    assert "12/12 groups pruned" in p.stdout and "MACs 40,813,184 ->" in p.stdout
    plan = load_plan(tmp_path / "prune_plan.json")
    m = apply_plan(create_model("resnet20"), plan, (torch.randn(1, 3, 32, 32),))
    m.load_state_dict(load_file(str(tmp_path / "resnet20_pruned.safetensors")))
    assert all(c.out_channels % 8 == 0 for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    x = torch.randn(4, 3, 32, 32)
    ref = load_pretrained("resnet20")
    assert m.eval()(x).shape == ref(x).shape
    bad = run("prune", "--ratio", "1.2", "--out", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and "ratio" in bad.stderr and not (tmp_path / "bad").exists()
