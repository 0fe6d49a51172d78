import pytest
import torch

from edgecompress.errors import ExportError, OutputMatchError
from edgecompress.export import ExportConfig, get_exporter
from edgecompress.models import create_model
from edgecompress.prune import PruneConfig, prune_
from edgecompress.testing import randomize_bn_


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
    with pytest.raises(OutputMatchError, match=r"onnx does not match PyTorch: max abs diff .* > atol 0.0001"):
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
