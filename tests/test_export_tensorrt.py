"""TensorRT engines from the TensorRT-flavour QDQ ONNX. Without TensorRT or a GPU every entry point
says which is missing; with both (``-m gpu``) the engine agrees with onnxruntime on the same graph."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import edgecompress.export.tensorrt as T
from edgecompress.errors import BackendUnavailableError, ModelInputError
from edgecompress.export.tensorrt import (build_engine, is_tensorrt_available, load_engine, tensorrt_unavailable_reason,
                                          time_engine)


def test_unavailable_here_raises_with_the_reason(tmp_path):
    if is_tensorrt_available():
        pytest.skip("TensorRT and a CUDA GPU are available here")
    reason = tensorrt_unavailable_reason()
    assert reason
    if importlib.util.find_spec("tensorrt") is None:
        assert "pip install edgecompress[tensorrt]" in reason and "pip install tensorrt" in reason, reason
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in reason, reason
    calls = {"build_engine": lambda: build_engine(tmp_path / "m.onnx", tmp_path / "m.engine"),
             "load_engine": lambda: load_engine(tmp_path / "m.engine"),
             "time_engine": lambda: time_engine(tmp_path / "m.engine", batch=1, warmup=1, iters=1)}
    for name, call in calls.items():
        with pytest.raises(BackendUnavailableError) as ei:
            call()
        assert str(ei.value) == reason, name
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_reason_names_each_missing_piece(monkeypatch):
    def no_tensorrt():
        raise ModuleNotFoundError("No module named 'tensorrt'")

    fake = object()
    monkeypatch.setattr(T, "_import_tensorrt", no_tensorrt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    r = tensorrt_unavailable_reason()
    assert "pip install edgecompress[tensorrt]" in r and "pip install tensorrt" in r and "no CUDA GPU" not in r, r
    assert not is_tensorrt_available()

    monkeypatch.setattr(T, "_import_tensorrt", lambda: fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = tensorrt_unavailable_reason()
    assert "no CUDA GPU" in r and "pip install" not in r, r
    with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
        T.require_tensorrt()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tensorrt_unavailable_reason() == "" and is_tensorrt_available() and T.require_tensorrt() is fake


def _tiny_resnet_qdq(tmp_path):
    from edgecompress.export.onnx_qdq import export_onnx_qdq
    from edgecompress.models import create_model
    from edgecompress.quantize import QuantConfig, quantize_
    from edgecompress.testing import randomize_bn_, synthetic_loaders

    torch.manual_seed(0)
    train, val = synthetic_loaders(n_train=128, n_val=64, batch_size=32)
    q = randomize_bn_(create_model("tiny_resnet")).eval()
    quantize_(q, QuantConfig(calib_batches=4, stability_splits=0), train, target="tensorrt", progress=False)
    path = export_onnx_qdq(q, (torch.randn(1, 3, 32, 32),), tmp_path / "m.trt.onnx", flavour="tensorrt")
    return q, path, torch.cat([b[0] for b in val])


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not is_tensorrt_available(), reason="needs TensorRT and a CUDA GPU")
def test_engine_from_tensorrt_qdq_agrees_with_onnxruntime(tmp_path):
    from edgecompress.export.onnx import ort_session

    q, onnx_path, x = _tiny_resnet_qdq(tmp_path)
    engine = build_engine(onnx_path, tmp_path / "m.engine", max_batch=64, opt_batch=8)
    assert engine.is_file() and engine.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.trt.onnx"]  # no temporaries left
    run = load_engine(engine)
    xs = x.numpy()
    got = np.concatenate([run(xs[i:i + 5]) for i in range(0, len(xs), 5)])  # dynamic batch: 5 (and a last 4)
    assert got.shape == (len(xs), 10) and got.dtype == np.float32
    ref = ort_session(onnx_path, 1).run(None, {"input": xs})[0]
    with torch.no_grad():
        sim = q.eval()(x).numpy()
    agree_ort = (got.argmax(1) == ref.argmax(1)).mean()
    agree_sim = (got.argmax(1) == sim.argmax(1)).mean()
    spread = float(ref.max() - ref.min())
    assert agree_ort >= 0.95, f"top-1 agreement with onnxruntime {agree_ort:.3f}"
    assert agree_sim >= 0.95, f"top-1 agreement with the int8 simulation {agree_sim:.3f}"
    # int8 kernels with fused rescales vs float convs on dequantized codes: a few codes apart at most
    assert np.abs(got - ref).max() < 0.1 * spread
    with pytest.raises(ModelInputError, match="max_batch"):
        run(np.zeros((65, 3, 32, 32), np.float32))
    t = time_engine(engine, batch=1, warmup=5, iters=20)
    assert 0 < t["ms_median"] <= t["ms_p90"] and t["iters"] == 20
