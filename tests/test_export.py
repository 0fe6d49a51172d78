import copy
import os
import struct

import numpy as np
import pytest
import torch

from edgecompress.errors import ConfigError, ExportError, OutputDirError, OutputMatchError
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.models import create_model
from edgecompress.prune import PruneConfig, prune_
from edgecompress.quantize import QuantConfig, quantize_
from edgecompress.testing import randomize_bn_, synthetic_loaders


@pytest.fixture(scope="module")
def resnet20():
    return randomize_bn_(create_model("resnet20"))


@pytest.mark.parametrize("backend", ["onnx", "ncnn", "torch"])
def test_fp32_export_matches_torch(backend, resnet20, tmp_path):
    exp = get_exporter(backend)
    paths = exp.export(resnet20, (torch.randn(1, 3, 32, 32),), tmp_path)
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp left
    # batch sizes unlike the traced one (1 for ncnn, 2 for onnx/torch), and a ragged last batch
    res = exp.validate(resnet20, paths, torch.randn(70, 3, 32, 32), batch_size=16)
    assert res.max_abs_diff <= 1e-4, res
    assert res.top1_agreement == 1.0 and res.sqnr_db > 80


def test_pruned_model_exports(tmp_path):
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(1, 3, 32, 32)
    prune_(m, PruneConfig(ratio=0.5), (x,))
    for backend in ("onnx", "ncnn"):
        exp = get_exporter(backend)
        paths = exp.export(m, (x,), tmp_path / backend)
        assert exp.validate(m, paths, torch.randn(9, 3, 32, 32), batch_size=4).max_abs_diff <= 1e-4
    param = (tmp_path / "ncnn" / "model.ncnn.param").read_text()
    assert " 0=8 " in param  # 16 -> 8 output channels in the stem conv


def test_mismatch_raises_typed_error_with_numbers(resnet20, tmp_path):
    exp = get_exporter("onnx")
    paths = exp.export(resnet20, (torch.randn(2, 3, 32, 32),), tmp_path)
    other = randomize_bn_(create_model("resnet20"), seed=5)
    with pytest.raises(OutputMatchError, match=r"onnx does not match PyTorch: output 'logits': max abs diff .* > atol 0.0001"):
        exp.validate(other, paths, torch.randn(8, 3, 32, 32))
    res = exp.validate(other, paths, torch.randn(8, 3, 32, 32), raise_on_fail=False)
    assert not res.passed and res.failures()


def test_failed_export_leaves_nothing(tmp_path):
    class Untraceable(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x.flatten(1)[:, :10]
            return torch.zeros(x.shape[0], 10)

    with pytest.raises(ExportError):
        get_exporter("onnx").export(Untraceable(), (torch.randn(1, 3, 32, 32),), tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_export_config_validation():
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        ExportConfig(precision="int4")
    with pytest.raises(ConfigError, match="unknown exporter"):
        get_exporter("coreml")


@pytest.mark.parametrize("backend", ["onnx-fp16", "ncnn-fp16"])
def test_fp16_export_within_bound(backend, resnet20, tmp_path):
    # reference: simulate_fp16_ (what the artifact stores, in fp32 arithmetic). ncnn: BN folded,
    # conv/linear weights fp16, biases fp32; onnx: every parameter fp16. Default bound 5e-2 / 98%.
    exp = get_exporter(backend)
    paths = exp.export(resnet20, (torch.randn(1, 3, 32, 32),), tmp_path)
    assert ".fp16." in paths[next(iter(paths))].name
    x = torch.randn(64, 3, 32, 32)
    res = exp.validate(resnet20, paths, x, batch_size=16)
    print(backend, res.max_abs_diff, res.sqnr_db)
    assert res.reference.startswith("fp16 simulation")
    assert res.max_abs_diff <= 2e-2 and res.sqnr_db > 40 and res.top1_agreement >= 0.98
    if backend == "ncnn-fp16":  # the simulation is ncnn's arithmetic on x86: far closer than fp32 is
        vs_fp32 = exp.validate(resnet20, paths, x, batch_size=16, reference=_batched_fp32(resnet20, x))
        assert res.max_abs_diff < vs_fp32.max_abs_diff / 3, (res.max_abs_diff, vs_fp32.max_abs_diff)
    if backend == "onnx-fp16":
        import onnx

        inits = onnx.load(str(paths["onnx"])).graph.initializer
        assert {i.data_type for i in inits if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}


def _batched_fp32(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_simulate_fp16_rounds_what_each_backend_stores(resnet20):
    from edgecompress.quantize import simulate_fp16_

    m = copy.deepcopy(resnet20)
    rep = simulate_fp16_(m, "ncnn")
    assert rep["bn_folded"] == 21 and rep["rounded_tensors"] == 22  # 19 convs + 2 projection shortcuts, + fc
    conv = m.conv1 if hasattr(m, "conv1") else next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d))
    assert torch.equal(conv.weight, conv.weight.half().float())
    assert not torch.equal(conv.bias, conv.bias.half().float())  # folded bias kept fp32, as ncnn does
    assert min(rep["weight_sqnr_db"].values()) > 60  # fp16 has an 11-bit significand: ~66 dB on Gaussian weights
    m2 = copy.deepcopy(resnet20)
    rep2 = simulate_fp16_(m2, "onnx")
    assert rep2["bn_folded"] == 0
    assert all(torch.equal(t, t.half().float()) for t in m2.state_dict().values() if t.is_floating_point())
    with pytest.raises(ConfigError, match="no fp16 simulation for target 'coreml'"):
        simulate_fp16_(copy.deepcopy(resnet20), "coreml")


def _quantized(target, seed=0):
    m = randomize_bn_(create_model("tiny_resnet"), seed=seed).eval()
    q = copy.deepcopy(m)
    train, _ = synthetic_loaders(n_train=128, batch_size=32)
    quantize_(q, QuantConfig(calibration="minmax", calib_batches=4, stability_splits=0), train, target=target,
              progress=False)
    return q


@pytest.mark.parametrize("backend,contract", [("ncnn-int8", "ncnn"), ("onnx-int8", "onnx")])
def test_int8_exporters_validate_against_the_simulation_and_float(backend, contract, tmp_path):
    torch.manual_seed(0)  # 48 images: one flipped prediction is 2%, so fix the inputs
    q = _quantized(contract)
    exp = get_exporter(backend)
    paths = exp.export(q, (torch.randn(1, 3, 32, 32),), tmp_path)
    res = exp.validate(q, paths, torch.randn(48, 3, 32, 32), batch_size=7)
    assert res.reference.startswith("int8 simulation") and res.passed
    assert res.top1_agreement >= 0.99 and res.vs_float["sqnr_db"] < res.sqnr_db
    if backend == "ncnn-int8":  # bit-exact on regular convolutions
        assert res.max_abs_diff <= 1e-5 and exp.notes()["requantized_layers"] >= 1
        assert paths["ncnn_table"].read_text().count("_param_0 ") == exp.notes()["int8_layers"]
    with pytest.raises(ConfigError, match=f"target={contract!r}"):
        exp.export(_quantized("tensorrt"), (torch.randn(1, 3, 32, 32),), tmp_path / "x")
    with pytest.raises(ConfigError, match="quantize the model first"):
        exp.export(randomize_bn_(create_model("tiny_resnet")), (torch.randn(1, 3, 32, 32),), tmp_path / "y")


def test_ncnn_int8_corrupt_scale_names_output_layer_and_diff(tmp_path):
    from edgecompress.export.ncnn_int8 import _walk_int8_bin, read_param

    torch.manual_seed(0)
    q = _quantized("ncnn")
    exp = get_exporter("ncnn-int8")
    paths = exp.export(q, (torch.randn(1, 3, 32, 32),), tmp_path)
    layers = read_param(paths["ncnn_param"])
    victim = [ly for ly in layers if ly.type == "Convolution"][2]
    # multiply the victim's input scale by 8: its input saturates, everything after it departs
    raw = bytearray(paths["ncnn_bin"].read_bytes())
    rec = _walk_int8_bin(paths["ncnn_bin"], layers)[victim.name]
    off = rec["input_scale_offset"]
    raw[off:off + 4] = struct.pack("<f", rec["input_scale"] * 8)
    paths["ncnn_bin"].write_bytes(bytes(raw))
    with pytest.raises(OutputMatchError) as e:
        exp.validate(q, paths, torch.randn(32, 3, 32, 32))
    msg = str(e.value)
    assert "output 'logits': SQNR" in msg and "max abs diff" in msg
    assert f"first diverging layer {victim.name!r}" in msg and e.value.layer["layer"] == victim.name
    assert e.value.layer["max_rel_diff"] > 0.01


def test_onnx_int8_corrupt_scale_names_output_and_diff(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    q = _quantized("onnx")
    exp = get_exporter("onnx-int8")
    paths = exp.export(q, (torch.randn(1, 3, 32, 32),), tmp_path)
    model = onnx.load(str(paths["onnx"]))
    # a weight scale 4x too large: that conv's output (and everything after it) is 4x off
    init = next(i for i in model.graph.initializer if i.name == "layer2_0_conv1_w_scale")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 4, init.name))
    onnx.save(model, str(paths["onnx"]))
    with pytest.raises(OutputMatchError, match=r"onnx-int8 does not match PyTorch: .*output 'logits': SQNR [\d.-]+ dB "
                                               r"< 20 dB \(vs int8 simulation \(onnx contract\), max abs diff [\d.e-]+\)"):
        exp.validate(q, paths, torch.randn(32, 3, 32, 32))


def test_ncnn_unsupported_op_is_named(tmp_path):
    class Erfinv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.special.erfinv(self.c(x).flatten(1)[:, :10].clamp(-0.5, 0.5))

    with pytest.raises(ExportError, match=r"ncnn backend has no layer for op\(s\) aten::erfinv"):
        get_exporter("ncnn").export(Erfinv(), (torch.randn(1, 3, 8, 8),), tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_pnnx_failure_is_surfaced_and_nothing_written(tmp_path):
    class DictOut(torch.nn.Module):  # torch.jit.trace cannot trace a model returning a set
        def forward(self, x):
            return {x.sum()}

    with pytest.raises(ExportError, match="pnnx needs a TorchScript trace"):
        get_exporter("ncnn").export(DictOut(), (torch.randn(1, 3, 8, 8),), tmp_path / "o")
    assert list((tmp_path / "o").iterdir()) == []


def test_output_folder_errors(resnet20, tmp_path):
    with pytest.raises(OutputDirError, match="does not exist; create it first"):
        get_exporter("onnx").export(resnet20, (torch.randn(1, 3, 32, 32),), tmp_path / "missing" / "out")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        get_exporter("onnx").export(resnet20, (torch.randn(1, 3, 32, 32),), blocker / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(resnet20, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputDirError, match="cannot write into"):
            get_exporter("onnx").export(resnet20, (torch.randn(1, 3, 32, 32),), ro)
    finally:
        ro.chmod(0o700)


def test_tensorrt_exporter_without_tensorrt_writes_and_validates_the_onnx(tmp_path):
    from edgecompress.export.tensorrt import is_tensorrt_available

    if is_tensorrt_available():
        pytest.skip("TensorRT and a GPU are present: the engine path is tested in test_export_tensorrt.py")
    q = _quantized("tensorrt")
    exp = get_exporter("tensorrt-int8")
    with pytest.warns(UserWarning, match="TensorRT engine not built"):
        paths = exp.export(q, (torch.randn(1, 3, 32, 32),), tmp_path)
    assert set(paths) == {"onnx"} and paths["onnx"].name == "model.int8-trt.onnx"
    notes = exp.notes()
    assert notes["engine"].startswith("skipped: ") and ("pip install" in notes["engine"] or "GPU" in notes["engine"])
    res = exp.validate(q, paths, torch.randn(32, 3, 32, 32))
    assert res.top1_agreement >= 0.99
