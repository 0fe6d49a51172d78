import json
import os
import stat

import pytest
import torch

import edgecompress as ec
from edgecompress.errors import ConfigError, DataError, ModelInputError, OutputDirError, UnknownTargetError
from edgecompress.testing import randomize_bn_, synthetic_loaders


@pytest.fixture(scope="module")
def loaders():
    return synthetic_loaders(n_train=256, n_val=96, batch_size=32)


FAST = dict(distill=ec.DistillConfig(epochs=1, max_steps=4, progress=False, bf16=False),
            quantize=ec.QuantConfig(calib_batches=2), bench=ec.BenchConfig(warmup=2, iters=5), progress=False)


def test_compress_end_to_end_ncnn(loaders, tmp_path):
    train, val = loaders
    model = randomize_bn_(ec.create_model("tiny_resnet"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ec.compress(model, "ncnn", train_data=train, val_data=val, output_dir=tmp_path / "out", **FAST)
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"model.ncnn.param", "model.ncnn.bin", "model.onnx", "report.json", "report.md", "report.html",
            "config.json"} <= names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".edgecompress-")]
    r = json.loads((out / "report.json").read_text())
    assert r["after"]["macs"] <= 0.6 * r["before"]["macs"]
    assert r["after"]["params"] < r["before"]["params"]
    for name in ("ncnn", "onnx"):
        assert r["artifacts"][name]["max_abs_diff"] <= 1e-4 and r["artifacts"][name]["top1_agreement"] == 1.0
    assert set(r["latency"]) == {"torch (original)", "torch", "ncnn", "onnxruntime"}
    assert all(v["ms_median"] > 0 for v in r["latency"].values())
    assert 0 <= r["int8_simulated"]["top1"] <= 1 and r["int8_simulated"]["scheme"] == "symmetric"
    assert res.artifacts["ncnn_param"] == out / "model.ncnn.param"
    assert res.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # ncnn's default round_to=8: every pruned conv keeps a multiple of 8 channels
    assert r["prune"]["config"]["round_to"] == 8
    assert all(c.out_channels % 8 == 0 for c in res.model.modules() if isinstance(c, torch.nn.Conv2d))
    assert r["int8_simulated"]["contract"] == "ncnn" and r["int8_simulated"]["spec"]["contract"]["rounding"] == "half_away"
    # functional similarity of every variant to the original, with its landscape in the report
    sim = r["similarity"]
    assert set(sim["models"]) == {"original", "pruned, before fine-tuning", "compressed (float)",
                                  "compressed, int8 simulated"}
    pair = sim["pairs"]["original|compressed (float)"]
    assert pair["agreement"] == pytest.approx(r["after"]["agreement_with_original"])
    assert pair["kl_mean"] > 0 and 0 < pair["js_mean"] <= 0.6932
    assert (out / "similarity_landscape.png").stat().st_size > 5000
    assert "![functional landscape](similarity_landscape.png)" in (out / "report.md").read_text()
    saved = res.save(tmp_path / "copy")
    assert (saved / "model.onnx").exists() and (saved / "report.html").exists()
    assert (saved / "similarity_landscape.png").exists()


def test_compress_without_stages_keeps_model_and_uses_affine(loaders):
    train, val = loaders
    model = randomize_bn_(ec.create_model("tiny_cnn"))
    res = ec.compress(model, "onnx", train_data=train, val_data=val, prune=False, distill=False,
                      quantize=ec.QuantConfig(calib_batches=1), bench=False, progress=False)
    assert res.report["after"]["agreement_with_original"] == 1.0
    assert res.report["int8_simulated"]["scheme"] == "affine"
    assert res.artifacts["onnx"].exists()
    assert "latency" not in res.report


def _no_leftovers(d):
    return not [p for p in d.rglob("*") if p.name.startswith(".edgecompress-") or p.suffix in (".onnx", ".param")]


def test_bad_inputs_are_typed_and_leave_nothing(loaders, tmp_path):
    train, val = loaders
    m = ec.create_model("tiny_cnn")
    out = tmp_path / "o"
    with pytest.raises(UnknownTargetError, match="known targets: ncnn, ncnn-fp16, ncnn-int8, onnx, .*, torch"):
        ec.compress(m, "ncnx", train_data=train, val_data=val, output_dir=out)
    with pytest.raises(ConfigError, match=r"ratio=1.0 is outside \[0.0, 1.0\)"):
        ec.compress(m, "onnx", train_data=train, prune=ec.PruneConfig(ratio=1.0), output_dir=out)
    with pytest.raises(ConfigError, match="ratio"):
        ec.compress(m, "onnx", train_data=train, prune={"ratio": 2.0}, output_dir=out)
    with pytest.raises(ModelInputError, match=r"shape \[\(1, 1, 28, 28\)\].*example_inputs"):
        ec.compress(m, "onnx", train_data=train, example_inputs=torch.randn(1, 1, 28, 28), output_dir=out, **FAST)
    with pytest.raises(DataError, match="train_data is empty"):
        ec.compress(m, "onnx", train_data=[], val_data=val, output_dir=out)
    with pytest.raises(DataError, match="need train_data"):
        ec.compress(m, "onnx", val_data=val, output_dir=out)
    assert _no_leftovers(tmp_path)


def test_unwritable_output_dir(loaders, tmp_path):
    train, val = loaders
    m = ec.create_model("tiny_cnn")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        ec.compress(m, "onnx", train_data=train, output_dir=afile)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores permissions (root)")
        with pytest.raises(OutputDirError, match="writable"):
            ec.compress(m, "onnx", train_data=train, output_dir=ro / "sub")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_unwritable_output_dir_under_a_file(loaders, tmp_path):
    train, _ = loaders
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="writable"):
        ec.compress(ec.create_model("tiny_cnn"), "onnx", train_data=train, output_dir=tmp_path / "f" / "sub")


def test_failure_midway_leaves_no_partial_artifacts(loaders, tmp_path, monkeypatch):
    train, val = loaders
    import edgecompress.export.ncnn as ncnn_mod

    def boom(self, *a, **k):
        raise ec.errors.ExportError("simulated pnnx failure")

    monkeypatch.setattr(ncnn_mod.NcnnExporter, "_export", boom)
    with pytest.raises(ec.errors.ExportError, match="simulated"):
        ec.compress(ec.create_model("tiny_cnn"), "ncnn", train_data=train, val_data=val, output_dir=tmp_path / "out",
                    prune=False, **FAST)
    assert list((tmp_path / "out").iterdir()) == []
    assert _no_leftovers(tmp_path)


def test_targets_registry():
    assert ec.list_targets() == ["ncnn", "ncnn-fp16", "ncnn-int8", "onnx", "onnx-fp16", "onnx-int8", "tensorrt",
                                 "tensorrt-int8", "torch"]
    assert ec.get_target("ncnn").quant_scheme == "symmetric"


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_torchvision_classifier_is_accepted(arch, loaders, tmp_path):
    import torchvision

    train, val = loaders
    model = randomize_bn_(getattr(torchvision.models, arch)(num_classes=10))
    res = ec.compress(model, "ncnn", train_data=train, val_data=val, prune=ec.PruneConfig(ratio=0.3, round_to=8),
                      distill=False, quantize=ec.QuantConfig(calib_batches=1), bench=False, progress=False,
                      output_dir=tmp_path)
    r = res.report
    assert r["after"]["macs"] < 0.75 * r["before"]["macs"]
    assert all(v["passed"] for v in r["artifacts"].values()), r["artifacts"]
    assert r["int8_simulated"]["layers"]
    # the saved plan rebuilds the pruned architecture from torchvision's own constructor
    fresh = ec.prune.apply_plan(getattr(torchvision.models, arch)(num_classes=10),
                                ec.prune.load_plan(res.artifacts["prune_plan"]), (torch.randn(1, 3, 32, 32),))
    fresh.load_state_dict(res.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), res.model.eval()(x))


def test_compress_teacher_assistants_and_auto_weights(loaders, tmp_path):
    train, val = loaders
    model = randomize_bn_(ec.create_model("tiny_resnet"))
    other = randomize_bn_(ec.create_model("tiny_resnet"), seed=1)
    res = ec.compress(model, "onnx", train_data=train, val_data=val, teacher="assistants",
                      prune=ec.PruneConfig(ratio=0.5, schedule="iterative", steps=3),
                      distill=ec.DistillConfig(epochs=1, max_steps=2, alpha="auto", probe_steps=4, progress=False,
                                               bf16=False),
                      quantize=False, bench=False, progress=False, reference_models={"independent": other})
    d = res.report["distill"]
    assert d["teacher"] == "assistant chain of 2 intermediate model(s)"
    a = d["weight_allocation"]
    assert d["alpha"] == a["alpha"] and d["beta"] == a["beta"] and a["alpha"] + a["beta"] == pytest.approx(1.0)
    sim = res.report["similarity"]
    assert "original|independent" in sim["pairs"] and sim["landscape"]["kinds"]["independent"] == "independent"
    with pytest.raises(ConfigError, match="iterative"):
        ec.compress(model, "onnx", train_data=train, teacher="assistants", prune=ec.PruneConfig(ratio=0.5),
                    quantize=False, bench=False, progress=False)
    with pytest.raises(ConfigError, match="assistants"):
        ec.compress(model, "onnx", train_data=train, teacher="previous", quantize=False, bench=False, progress=False)
