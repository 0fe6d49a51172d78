import copy

import pytest
import torch

from edgecompress.errors import ConfigError, DataError
from edgecompress.models import create_model
from edgecompress.quantize import FakeQuantConv2d, QuantConfig, fold_bn_, quantize_
from edgecompress.testing import randomize_bn_
from edgecompress.utils import sqnr_db


def _calib(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(n)]


def test_fold_bn_is_exact():
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(4, 3, 32, 32)
    ref = m(x)
    f = copy.deepcopy(m)
    assert fold_bn_(f) == 21
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in f.modules())
    torch.testing.assert_close(f(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_int8_simulation_quality_and_grid(scheme, calibration):
    m = randomize_bn_(create_model("resnet20"))
    x = torch.randn(32, 3, 32, 32)
    ref = m(x)
    q = copy.deepcopy(m)
    rep = quantize_(q, QuantConfig(calibration=calibration), _calib(), scheme=scheme, progress=False)
    assert rep["scheme"] == scheme and len(rep["layers"]) == 22
    s = sqnr_db(ref, q(x))
    assert s >= 30, f"SQNR {s:.1f} dB < 30 dB"
    for name, layer in rep["layers"].items():
        assert layer["act_scale"] > 0
        if scheme == "symmetric":
            assert layer["act_zero_point"] == 0
        else:
            assert 0 <= layer["act_zero_point"] <= 255
    # every fake-quantized conv input lies on the integer grid of its scale/zero point
    conv = next(mod for mod in q.modules() if isinstance(mod, FakeQuantConv2d))
    xin = conv.quant_input(torch.randn(2, 3, 32, 32) * 3)
    codes = xin / conv.act_scale + conv.act_zero_point
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    lo, hi = conv.act_qrange
    assert codes.min() >= lo - 1e-3 and codes.max() <= hi + 1e-3


def test_per_layer_sqnr_on_random_data():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    model = torch.nn.Sequential(conv)
    x = torch.randn(8, 16, 12, 12)
    ref = model(x)
    quantize_(model, QuantConfig(calibration="minmax"), [(x, None)], scheme="affine", progress=False)
    assert sqnr_db(ref, model(x)) >= 30


def test_bad_config_and_no_data():
    with pytest.raises(ConfigError, match="scheme"):
        QuantConfig(scheme="asym")
    with pytest.raises(DataError, match="calibration"):
        quantize_(create_model("tiny_cnn"), QuantConfig(), [], progress=False)


# -- contracts: exact integer arithmetic ------------------------------------------------------------

import numpy as np  # noqa: E402

from edgecompress.quantize import quant_layers, resolve_contract  # noqa: E402


class ConvReluLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _np_round_half_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def test_ncnn_contract_matches_numpy_reference_of_ncnn_integer_math():
    """EXPORT_FORMATS.md §2.2: q = clamp(round_half_away(x·s), -127, 127), s_w = 127/max|W[p]|,
    y = acc / (s_in·s_w[p]) + bias[p]; the consumer quantizes with its own s_in."""
    torch.manual_seed(0)
    m = ConvReluLinear().eval()
    calib = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    q = __import__("copy").deepcopy(m)
    rep = quantize_(q, QuantConfig(calibration="minmax"), calib, target="ncnn", progress=False)
    spec = rep["spec"]["layers"]
    x = torch.randn(4, 3, 8, 8)
    ours = q(x).detach().numpy().astype(np.float64)

    f32 = np.float32
    s_in1 = f32(spec["conv"]["act"]["scale"])
    w1 = m.conv.weight.detach().numpy().astype(f32)
    s_w1 = (f32(127) / np.abs(w1).reshape(8, -1).max(1)).astype(f32)
    assert np.array_equal(s_w1, np.array(spec["conv"]["weight"]["scales"], dtype=f32))
    qx = np.clip(_np_round_half_away(x.numpy() * s_in1), -127, 127)
    qw = np.clip(_np_round_half_away(w1 * s_w1[:, None, None, None]), -127, 127)
    acc = torch.nn.functional.conv2d(torch.from_numpy(qx), torch.from_numpy(qw), padding=1).numpy()  # exact ints
    assert np.array_equal(acc, np.round(acc))
    y1 = acc / (s_in1 * s_w1)[None, :, None, None] + m.conv.bias.detach().numpy()[None, :, None, None]
    h = np.maximum(y1, 0).reshape(4, -1)
    s_in2 = f32(spec["fc"]["act"]["scale"])
    w2 = m.fc.weight.detach().numpy().astype(f32)
    s_w2 = (f32(127) / np.abs(w2).max(1)).astype(f32)
    qh = np.clip(_np_round_half_away(h * s_in2), -127, 127)
    # the codes entering fc: ours (read back from the simulation) equal the reference's
    fc = quant_layers(q)["fc"]
    seen = {}
    hook = fc.register_forward_pre_hook(lambda mod, a: seen.setdefault("h", a[0].detach()))
    q(x)
    hook.remove()
    ours_codes = np.clip(_np_round_half_away(seen["h"].numpy() * s_in2), -127, 127)
    assert (ours_codes != qh).sum() <= 2  # a value on a .5 boundary may round differently after fp32 reordering
    qw2 = np.clip(_np_round_half_away(w2 * s_w2[:, None]), -127, 127)
    y2 = (qh @ qw2.T) / (s_in2 * s_w2)[None, :] + m.fc.bias.detach().numpy()[None, :]
    step = 1 / float(s_in2 * s_w2.min())
    assert np.abs(ours - y2).max() <= step, (np.abs(ours - y2).max(), step)
    assert np.abs(ours - y2).max() <= 1e-3


def test_ort_qdq_model_with_the_same_scales_matches_the_affine_simulation(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    m = ConvReluLinear().eval()
    calib = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    q = __import__("copy").deepcopy(m)
    rep = quantize_(q, QuantConfig(calibration="percentile"), calib, target="onnx", progress=False)
    L = rep["spec"]["layers"]
    inits = []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def w_int8(name, w, scales):
        qw = np.clip(np.round(w / scales.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
        return const(name + "_q", qw), const(name + "_s", scales.astype(np.float32)), const(name + "_z", np.zeros(len(scales), np.int8))

    def qdq(layer, inp, out):
        a = L[layer]["act"]
        s, z = const(layer + "_as", np.float32(a["scale"])), const(layer + "_az", np.uint8(a["zero_point"]))
        return [helper.make_node("QuantizeLinear", [inp, s, z], [out + "_u8"]),
                helper.make_node("DequantizeLinear", [out + "_u8", s, z], [out])]

    nodes = qdq("conv", "x", "xq")
    wq, ws, wz = w_int8("w1", m.conv.weight.detach().numpy(), np.array(L["conv"]["weight"]["scales"]))
    nodes.append(helper.make_node("DequantizeLinear", [wq, ws, wz], ["w1"], axis=0))
    nodes.append(helper.make_node("Conv", ["xq", "w1", const("b1", m.conv.bias.detach().numpy())], ["c"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    nodes.append(helper.make_node("Flatten", ["r"], ["hflat"], axis=1))
    nodes += qdq("fc", "hflat", "hq")
    wq, ws, wz = w_int8("w2", m.fc.weight.detach().numpy(), np.array(L["fc"]["weight"]["scales"]))
    nodes.append(helper.make_node("DequantizeLinear", [wq, ws, wz], ["w2"], axis=0))
    nodes.append(helper.make_node("Gemm", ["hq", "w2", const("b2", m.fc.bias.detach().numpy())], ["y"], transB=1))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    path = tmp_path / "qdq.onnx"
    onnx.save(model, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = torch.randn(8, 3, 8, 8)
    y_ort = sess.run(None, {"x": x.numpy()})[0]
    y_sim = q(x).detach().numpy()
    # one quantization step of fc's input, through fc's weights, bounds any code that rounds differently
    step = L["fc"]["act"]["scale"] * np.abs(m.fc.weight.detach().numpy()).max()
    assert np.abs(y_ort - y_sim).max() <= step, (np.abs(y_ort - y_sim).max(), step)
    assert np.abs(y_ort - y_sim).max() <= 1e-4


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_calibration_methods_clip_outliers_differently(method):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    data = []
    for _ in range(8):
        x = torch.randn(8, 3, 32, 32)
        x[0, 0, 0, 0] = 40.0  # a rare outlier: 1 in 24576 values
        data.append((x, None))
    rep = quantize_(m, QuantConfig(calibration=method, stability_splits=0), data, target="ncnn", progress=False)
    lo, hi = rep["spec"]["layers"]["0"]["act"]["range"]
    t = max(abs(lo), abs(hi))
    if method == "minmax":
        assert t == pytest.approx(40.0)
    elif method == "mse":  # clips only as far as it lowers the squared error, outlier included
        assert t < 40.0
        x = torch.cat([d[0] for d in data])
        def err(th):
            s = 127 / th
            return ((torch.clamp(torch.round(x * s), -127, 127) / s - x) ** 2).mean()
        assert err(t) <= err(40.0)
    else:
        assert t < 10.0, (method, t)  # the outlier is clipped


def test_unstable_calibration_is_flagged():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
    gen = torch.Generator().manual_seed(0)
    # batches whose scale changes a lot: the min/max threshold differs by far more than 10% per subset
    data = [(torch.randn(8, 3, 4, 4, generator=gen) * (1 + 4 * (i % 4 == 0)), None) for i in range(8)]
    with pytest.warns(UserWarning, match="vary by more than 10%"):
        rep = quantize_(m, QuantConfig(calibration="minmax", stability_splits=4), data, target="ncnn", progress=False)
    assert "0" in rep["unstable_layers"] and rep["layers"]["0"]["stability"] > 0.1
    stable = [(torch.randn(64, 3, 4, 4, generator=gen), None) for _ in range(8)]
    rep = quantize_(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), QuantConfig(calibration="percentile", percentile=99.0),
                    stable, target="ncnn", progress=False)
    assert rep["unstable_layers"] == []


def test_affine_on_symmetric_backend_warns_and_uses_symmetric():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1))
    with pytest.warns(UserWarning, match="symmetric int8 only"):
        rep = quantize_(m, QuantConfig(scheme="affine"), [(torch.randn(2, 3, 4, 4), None)], target="ncnn", progress=False)
    assert rep["scheme"] == "symmetric" and rep["spec"]["layers"]["0"]["act"]["zero_point"] == 0
    assert resolve_contract("tensorrt", None).act_qmin == -128


def test_ncnn_grouped_conv_weights_are_per_group():
    conv = torch.nn.Conv2d(8, 16, 3, groups=4)
    m = torch.nn.Sequential(conv)
    rep = quantize_(m, QuantConfig(), [(torch.randn(2, 8, 6, 6), None)], target="ncnn", progress=False)
    w = rep["spec"]["layers"]["0"]["weight"]
    assert w["granularity"] == "per_group"
    assert len(set(w["scales"][0:4])) == 1 and len(set(w["scales"])) == 4
    rep = quantize_(torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, groups=4)), QuantConfig(), [(torch.randn(2, 8, 6, 6), None)],
                    target="onnx", progress=False)
    assert rep["spec"]["layers"]["0"]["weight"]["granularity"] == "per_channel"


def test_weight_sqnr_per_channel_resnet20_at_least_35db():
    m = randomize_bn_(create_model("resnet20"))
    rep = quantize_(m, QuantConfig(), _calib(2), target="onnx", progress=False)
    sq = {n: v["weight_sqnr_db"] for n, v in rep["layers"].items()}
    assert min(sq.values()) >= 35, sorted(sq.items(), key=lambda kv: kv[1])[:3]


def test_sensitivity_fallback_keeps_the_worst_layer_float():
    torch.manual_seed(0)
    m = ConvReluLinear().eval()
    with torch.no_grad():
        m.conv.weight[0] *= 200  # one huge filter: per-tensor weights crush the others
    data = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    x = torch.randn(32, 3, 8, 8)
    ref = m(x)
    plain = __import__("copy").deepcopy(m)
    quantize_(plain, QuantConfig(per_channel=False, stability_splits=0), data, target="onnx", progress=False)
    fb = __import__("copy").deepcopy(m)
    rep = quantize_(fb, QuantConfig(per_channel=False, stability_splits=0, fallback_layers=1), data, target="onnx",
                    progress=False)
    worst = min(rep["sensitivity"], key=rep["sensitivity"].get)
    assert list(rep["float_layers"]) == [worst] and "sensitivity" in rep["float_layers"][worst]
    assert rep["spec"]["layers"][worst]["float"] is True
    assert sqnr_db(ref, fb(x)) > sqnr_db(ref, plain(x)) + 3  # measured: 35.7 vs 30.4 dB


def test_bad_calibration_data_and_unsupported_layers():
    m = create_model("tiny_cnn")
    bad = torch.randn(4, 3, 32, 32)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        quantize_(m, QuantConfig(), [(bad, None)], progress=False)
    # the model is usable afterwards: no observer left behind
    assert all(q.observer is None for q in quant_layers(m).values())
    with pytest.raises(ConfigError, match="calibration"):
        QuantConfig(calibration="kl")
    with pytest.raises(ConfigError, match="method"):
        QuantConfig(layer_calibration={"fc": "magic"})
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ConvTranspose2d(4, 4, 2), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 9 * 9 if False else 4 * 10 * 10, 2))
    with pytest.warns(UserWarning, match="cannot be quantized"):
        rep = quantize_(net, QuantConfig(), [(torch.randn(2, 3, 9, 9), None)], target="onnx", progress=False)
    assert "1" in rep["float_layers"] and set(rep["spec"]["layers"]) == {"0", "3"}
    assert net(torch.randn(1, 3, 9, 9)).shape == (1, 2)


def test_qat_with_kd_recovers_a_badly_calibrated_model_and_stays_on_the_grid():
    from edgecompress.distill import DistillConfig, TrainConfig, fit
    from edgecompress.quantize import qat_
    from edgecompress.testing import synthetic_loaders
    from edgecompress.utils import evaluate

    train, val = synthetic_loaders(n_train=1024, n_val=256, batch_size=64, learnable=True)
    torch.manual_seed(0)
    teacher = create_model("tiny_cnn")
    fit(teacher, train, None, TrainConfig(epochs=4, lr=0.1, progress=False, bf16=False), log=lambda s: None)
    f_acc = evaluate(teacher, val)
    q = __import__("copy").deepcopy(teacher)
    # calibrate on inputs 20x too small: activation ranges far too narrow, heavy clipping
    tiny = [(x * 0.05, y) for x, y in list(train)[:2]]
    quantize_(q, QuantConfig(calibration="minmax", stability_splits=0), tiny, target="ncnn", progress=False)
    ptq_acc = evaluate(q, val)
    w0 = quant_layers(q)["fc"].weight.detach().clone()
    qat_(q, teacher, train, None, DistillConfig(epochs=4, lr=0.01, progress=False, bf16=False), ema_momentum=0.5,
         log=lambda s: None)
    qat_acc = evaluate(q, val)
    # measured: float 73.8%, PTQ with the bad ranges 12.5%, after 4 QAT+KD epochs 75.0%
    assert f_acc >= 0.6 and qat_acc >= ptq_acc + 0.4 and qat_acc >= f_acc - 0.03, (f_acc, ptq_acc, qat_acc)
    assert not torch.equal(quant_layers(q)["fc"].weight, w0)  # STE gradients reached the weights
    for layer in quant_layers(q).values():  # frozen ranges and refreshed weight scales after QAT
        assert layer.ema is None and not layer.dynamic_weights
        w_codes = layer.quant_weight() * layer.w_scale.view((-1,) + (1,) * (layer.weight.dim() - 1))
        torch.testing.assert_close(w_codes, w_codes.round(), atol=1e-3, rtol=0)
