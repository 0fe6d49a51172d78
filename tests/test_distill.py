import copy
import json

import pytest
import torch

from edgecompress.distill import DistillConfig, TrainConfig, distill_, fit, kd_loss
from edgecompress.errors import ConfigError, DataError
from edgecompress.models import create_model
from edgecompress.testing import synthetic_loaders


def test_kd_loss_zero_for_identical_and_matches_formula():
    z = torch.randn(8, 10)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t, T = torch.randn(8, 10), torch.randn(8, 10), 3.0
    p_t = torch.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_training_reduces_loss_and_checkpoints(tmp_path):
    train, val = synthetic_loaders(n_train=1024, n_val=128, batch_size=64)
    m = create_model("tiny_cnn")
    hist = fit(m, train, val, TrainConfig(epochs=3, lr=0.1, progress=False, bf16=False), checkpoint_dir=tmp_path,
               log=lambda s: None)
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.8, hist
    assert hist[-1]["val_top1"] > 0.3
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    assert len(json.loads((tmp_path / "history.json").read_text())) == 3
    # resume: continues after epoch 3 up to 4
    m2 = create_model("tiny_cnn")
    hist2 = fit(m2, train, val, TrainConfig(epochs=4, lr=0.1, progress=False, bf16=False), checkpoint_dir=tmp_path,
                resume=True, log=lambda s: None)
    assert [h["epoch"] for h in hist2] == [1, 2, 3, 4]


def test_distillation_moves_student_towards_teacher():
    train, val = synthetic_loaders(n_train=1024, n_val=128, batch_size=64)
    teacher = create_model("tiny_cnn")
    fit(teacher, train, None, TrainConfig(epochs=3, lr=0.1, progress=False, bf16=False), log=lambda s: None)
    student = create_model("tiny_cnn", width=8)
    x = torch.cat([b[0] for b in val])
    with torch.no_grad():
        before = kd_loss(student.eval()(x), teacher.eval()(x), 1.0).item()
    distill_(student, teacher, train, None, DistillConfig(epochs=3, lr=0.1, alpha=0.0, beta=1.0, progress=False, bf16=False),
             log=lambda s: None)
    with torch.no_grad():
        after = kd_loss(student(x), teacher(x), 1.0).item()
    assert after < 0.6 * before, (before, after)


def test_budget_and_bad_config():
    train, _ = synthetic_loaders(n_train=256, batch_size=32)
    m = create_model("tiny_cnn")
    hist = fit(m, train, None, TrainConfig(epochs=5, max_steps=3, progress=False, bf16=False), log=lambda s: None)
    assert hist[-1]["steps"] == 3
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0)
    with pytest.raises(DataError, match="empty"):
        fit(copy.deepcopy(m), [], None, TrainConfig(progress=False))
