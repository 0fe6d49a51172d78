"""edgecompress bench: the schema, real runtimes, cost read from the artifacts, typed errors."""

import copy
import csv
import json

import numpy as np
import pytest
import torch

from edgecompress.bench import COLUMNS, SCHEMA, bench, discover
from edgecompress.bench.harness import peak_memory_mb
from edgecompress.cli import main
from edgecompress.errors import ArtifactNotFoundError, BackendUnavailableError, ConfigError, DeviceUnavailableError
from edgecompress.export import get_exporter
from edgecompress.models import create_model
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.testing import randomize_bn_, synthetic_loaders


@pytest.fixture(scope="module")
def artifact_set(tmp_path_factory):
    """A tiny ResNet in torch (.pt2), ONNX, ncnn fp32 and ncnn int8, and the model itself."""
    d = tmp_path_factory.mktemp("set")
    torch.manual_seed(0)
    m = randomize_bn_(create_model("tiny_resnet"), seed=0).eval()
    x = (torch.randn(1, 3, 32, 32),)
    for name in ("onnx", "ncnn", "torch"):
        get_exporter(name).export(m, x, d)
    q = copy.deepcopy(m)
    train, _ = synthetic_loaders(n_train=128, batch_size=32)
    quantize_(q, QuantConfig(calibration="minmax", calib_batches=4, stability_splits=0), train, target="ncnn",
              progress=False)
    get_exporter("ncnn-int8").export(q, x, d / "int8")
    return d, m


def test_schema_rows_for_every_runtime_and_thread_count(artifact_set, tmp_path):
    d, m = artifact_set
    table = bench([d, d / "int8"], threads=(1, 2), warmup=3, iters=20, memory=False)
    rows = table.rows
    assert {(r["runtime"], r["threads"]) for r in rows} == {(rt, t) for rt in ("torch", "onnxruntime", "ncnn") for t in (1, 2)}
    assert len(rows) == 8 and all(list(r) == list(COLUMNS) for r in rows)
    assert all(r["ms_p10"] <= r["ms_median"] <= r["ms_p90"] <= r["ms_p99"] for r in rows)
    assert all(r["throughput_ips"] == pytest.approx(1e3 / r["ms_median"]) for r in rows)
    # MACs are read from each artifact itself (torch flop counter, ONNX shapes, ncnn blob sizes): one number
    from edgecompress.analysis import count_macs

    expected = count_macs(m, (torch.zeros(1, 3, 32, 32),))
    assert {r["macs"] for r in rows} == {expected}
    by = {r["artifact"].split("/")[-1]: r for r in rows}
    assert all(r["artifact"].startswith((d.name + "/", "int8/")) for r in rows)  # named by folder: unique
    assert by["model.onnx"]["params"] == by["model.ncnn.param"]["params"] == by["model.int8.ncnn.param"]["params"]
    assert by["model.int8.ncnn.param"]["precision"] == "int8" and by["model.int8.ncnn.param"]["target"] == "ncnn-int8"
    assert by["model.onnx"]["size_bytes"] == (d / "model.onnx").stat().st_size
    assert by["model.int8.ncnn.param"]["size_bytes"] < by["model.ncnn.param"]["size_bytes"] / 2.5
    text = table.to_csv(tmp_path / "b.csv")
    header = next(csv.reader(text.splitlines()))
    assert tuple(header[: len(SCHEMA)]) == SCHEMA
    saved = table.save(tmp_path)
    assert json.loads(saved["json"].read_text())["schema"] == list(COLUMNS)
    assert saved["latency_vs_macs"].stat().st_size > 1000


def test_repeated_runs_agree_within_the_reported_spread(artifact_set):
    d, _ = artifact_set
    # up to three pairs: this VM's host changes its speed by up to 2x from one minute to the next (seen:
    # medians of 0.18 and 0.11 ms seconds apart), which no spread measured inside one run can cover
    for _ in range(3):
        runs = [bench([d / "model.onnx"], threads=1, warmup=20, iters=300, memory=False).rows[0] for _ in range(2)]
        spread = max(r["ms_p90"] - r["ms_p10"] for r in runs)
        if abs(runs[0]["ms_median"] - runs[1]["ms_median"]) <= spread:
            break
    assert abs(runs[0]["ms_median"] - runs[1]["ms_median"]) <= spread, runs


def test_top1_measured_in_each_runtime(artifact_set):
    d, m = artifact_set
    _, val = synthetic_loaders(n_train=8, n_val=96, batch_size=32)
    with torch.no_grad():
        ref = np.mean([(m(x).argmax(1) == y).float().mean().item() for x, y in val])
    rows = bench([d], threads=1, warmup=1, iters=3, memory=False, top1_data=val).rows
    for r in rows:  # fp32 everywhere: the same predictions as the model
        assert r["top1"] == pytest.approx(ref, abs=1e-9), r


def test_peak_memory_probe(artifact_set):
    d, _ = artifact_set
    x = np.zeros((1, 3, 32, 32), np.float32)
    a = next(a for a in discover([d]) if a.runtime == "onnxruntime")
    mb = peak_memory_mb(a, 1, x, warmup=2)
    assert 1.0 < mb < 2000.0  # loading onnxruntime and the model costs something, and not gigabytes


def test_in_memory_torch_model_is_timed_too(artifact_set):
    d, m = artifact_set
    rows = bench([d / "model.onnx"], models={"tiny": m}, threads=1, warmup=2, iters=5, memory=False).rows
    assert {r["runtime"] for r in rows} == {"onnxruntime", "torch"}
    assert rows[0]["macs"] == rows[1]["macs"]


def test_bad_input_gives_typed_errors(artifact_set, tmp_path):
    d, _ = artifact_set
    with pytest.raises(ArtifactNotFoundError, match="does not exist"):
        bench([tmp_path / "nope.onnx"], iters=5)
    with pytest.raises(ConfigError, match="unknown runtime.*known: torch, onnxruntime, ncnn, tensorrt"):
        bench([d], runtimes=("openvino",), iters=5)
    with pytest.raises(ConfigError, match="iters must be >= 1"):
        bench([d], iters=0)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        bench([d], threads=(0,), iters=5)
    with pytest.raises(ConfigError, match="unknown device"):
        bench([d], device="tpu", iters=5)
    lonely = tmp_path / "half"
    lonely.mkdir()
    (lonely / "m.ncnn.param").write_text((d / "model.ncnn.param").read_text())
    with pytest.raises(ArtifactNotFoundError, match="needs both its .param and .bin"):
        bench([lonely / "m.ncnn.param"], iters=5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactNotFoundError, match="no artifact"):
        bench([empty], iters=5)
    with pytest.raises(ArtifactNotFoundError, match="for runtime"):
        bench([d / "model.onnx"], runtimes=("ncnn",), iters=5)


def test_runtime_not_installed_and_missing_gpu(artifact_set):
    d, _ = artifact_set
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(BackendUnavailableError, match="pip install"):
            bench([d], runtimes=("tensorrt",), iters=5)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="--device cpu"):
            bench([d / "model.pt2"], device="cuda", iters=5)
    with pytest.raises(ConfigError, match="cannot run on device 'cuda'"):
        bench([d / "model.onnx"], device="cuda", iters=5)


def test_cli_writes_the_table(artifact_set, tmp_path, capsys):
    d, _ = artifact_set
    out = tmp_path / "out"
    assert main(["bench", str(d), "--threads", "1,2", "--warmup", "2", "--iters", "10", "--no-memory",
                 "--runtime", "onnxruntime,ncnn", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"| {d.name}/model.onnx | onnxruntime | fp32 | 2 |" in text
    rows = list(csv.DictReader((out / "bench.csv").read_text().splitlines()))
    assert len(rows) == 4 and {r["runtime"] for r in rows} == {"onnxruntime", "ncnn"}
    assert (out / "bench.md").read_text().startswith("| artifact |")
    assert main(["bench", str(d), "--iters", "0"]) == 2
    assert "iters must be >= 1" in capsys.readouterr().err


def test_thread_pool_variables_are_recorded_with_the_measurement(monkeypatch):
    from edgecompress.bench.harness import _info_line, threading_env

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = threading_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_NUM_THREADS" not in env
    assert "OMP_WAIT_POLICY=PASSIVE" in _info_line({"host": "h", **env})
