import copy
import math
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


def test_kd_gradient_of_t2_scaling_matches_formula():
    # d/dz_s [T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))] = T·(softmax(z_s/T) − softmax(z_t/T)) / batch
    torch.manual_seed(0)
    for T in (1.0, 4.0, 10.0):
        s = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
        t = torch.randn(6, 10, dtype=torch.float64)
        kd_loss(s, t, T).backward()
        expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1)) / 6
        assert torch.allclose(s.grad.double(), expected, atol=1e-6), T


def test_eq7_weights_from_given_improvements():
    from edgecompress.distill import allocate_weights

    assert allocate_weights(0.06, 0.02) == pytest.approx((0.75, 0.25))
    assert allocate_weights(0.0, 0.1) == pytest.approx((0.0, 1.0))
    a, b = allocate_weights(0.013, 0.029)
    assert a + b == pytest.approx(1.0) and a == pytest.approx(0.013 / 0.042)
    with pytest.raises(ConfigError, match="probe_steps"):
        allocate_weights(0.0, 0.0)


def test_auto_weights_run_two_probes_and_are_reported():
    from edgecompress.distill import resolve_weights

    train, val = synthetic_loaders(n_train=512, n_val=128, batch_size=64)
    teacher = create_model("tiny_cnn")
    fit(teacher, train, None, TrainConfig(epochs=6, lr=0.1, progress=False, bf16=False), log=lambda s: None)
    student = create_model("tiny_cnn", width=8)
    cfg, rec = resolve_weights(DistillConfig(alpha="auto", probe_steps=32, lr=0.1, progress=False, bf16=False),
                               student, teacher, train, val)
    assert rec["I_A"] == pytest.approx(max(0.0, rec["probe_top1_teacher"] - rec["probe_top1_before"]))
    assert rec["I_B"] == pytest.approx(max(0.0, rec["probe_top1_labels"] - rec["probe_top1_before"]))
    assert rec["I_A"] + rec["I_B"] > 0  # 32 steps teach this learnable data something
    assert (cfg.alpha, cfg.beta) == pytest.approx((rec["I_A"] / (rec["I_A"] + rec["I_B"]),
                                                   rec["I_B"] / (rec["I_A"] + rec["I_B"])))
    logs = []
    distill_(student, teacher, train, None, DistillConfig(alpha="auto", probe_steps=8, epochs=1, max_steps=2,
             progress=False, bf16=False), log=logs.append)
    assert '"kd_weights"' in logs[0]


def test_bad_input_typed_errors(tmp_path):
    from edgecompress.errors import CheckpointError, ModelInputError

    train, _ = synthetic_loaders(n_train=128, batch_size=32)
    with pytest.raises(ModelInputError, match="same classes"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 100), 4.0)
    teacher100 = create_model("tiny_cnn", num_classes=100)
    with pytest.raises(ModelInputError, match="same classes"):
        distill_(create_model("tiny_cnn"), teacher100, train, None, DistillConfig(progress=False, bf16=False),
                 checkpoint_dir=tmp_path / "never", log=lambda s: None)
    assert not (tmp_path / "never").exists()  # nothing half-written
    for T in (0, -1.0):
        with pytest.raises(ConfigError, match="temperature"):
            DistillConfig(temperature=T)
        with pytest.raises(ConfigError, match="temperature"):
            kd_loss(torch.randn(2, 3), torch.randn(2, 3), T)
    with pytest.raises(ConfigError, match="both zero"):
        DistillConfig(alpha=0.0, beta=0.0)
    with pytest.raises(DataError, match="empty"):
        fit(create_model("tiny_cnn"), [], None, TrainConfig(progress=False))
    # a checkpoint written by another architecture
    fit(create_model("tiny_cnn"), train, None, TrainConfig(epochs=1, max_steps=1, progress=False, bf16=False),
        checkpoint_dir=tmp_path / "ck", log=lambda s: None)
    with pytest.raises(CheckpointError, match="different model"):
        fit(create_model("tiny_cnn", width=8), train, None, TrainConfig(epochs=2, progress=False, bf16=False),
            checkpoint_dir=tmp_path / "ck", resume=True, log=lambda s: None)


def test_budgets_seconds_and_patience():
    train, val = synthetic_loaders(n_train=256, n_val=64, batch_size=32)
    hist = fit(create_model("tiny_cnn"), train, None, TrainConfig(epochs=50, max_seconds=0.0, progress=False, bf16=False),
               log=lambda s: None)
    assert len(hist) == 1 and hist[0]["steps"] == 1 and "time budget" in hist[0]["early_stop"]
    hist = fit(create_model("tiny_cnn"), train, val, TrainConfig(epochs=60, lr=0.0, patience=2, progress=False,
               bf16=False), log=lambda s: None)
    assert len(hist) == 3 and "no better" in hist[-1]["early_stop"]  # lr 0: never better after the first


def test_feature_hints_start_as_the_kept_channels_of_a_pruned_student():
    from edgecompress.distill import FeatureHints
    from edgecompress.prune import PruneConfig, prune_
    from edgecompress.testing import randomize_bn_

    teacher = randomize_bn_(create_model("resnet20"))
    student = copy.deepcopy(teacher)
    prune_(student, PruneConfig(method="fpgm", ratio=0.5), (torch.randn(1, 3, 32, 32),))
    kept = student.edgecompress_kept_channels["bn1"]
    assert len(kept) == 8
    x = torch.randn(4, 3, 32, 32)
    hints = FeatureHints(student, teacher, ["bn1"])
    hints.materialize(student, teacher, x)
    w = hints.adapters["0"].weight.view(16, 8)
    assert torch.equal(w[kept], torch.eye(8)) and w.sum() == 8  # student channel i -> teacher channel kept[i]
    with torch.no_grad():
        teacher(x)
        student(x)
        f_t = hints.feats["t0"]
        loss = hints.loss().item()
    hints.remove()
    # the stem sees the same image, so only the removed channels' energy is left in the hint loss
    removed = [c for c in range(16) if c not in kept]
    assert loss == pytest.approx(((f_t[:, removed] ** 2).sum() / f_t.numel()).item(), rel=1e-5)
    # a distillation with hints (two residual stages, widths 8->16 and 32->64) trains adapters and student
    train, _ = synthetic_loaders(n_train=64, batch_size=32)
    keys = set(student.state_dict())
    hist = distill_(student, teacher, train, None, DistillConfig(epochs=1, hint_layers=("layer1", "layer3"),
                    progress=False, bf16=False), log=lambda s: None)
    assert hist[-1]["steps"] == 2 and math.isfinite(hist[-1]["loss"])
    assert set(student.state_dict()) == keys  # the adapters are not left in the student
    assert not student._forward_hooks and not student.layer1._forward_hooks  # nor the hooks


def test_teacher_is_given_back_trainable_and_a_frozen_student_is_refused():
    train, _ = synthetic_loaders(n_train=64, n_val=8, batch_size=32)
    teacher, student = create_model("tiny_cnn"), create_model("tiny_cnn", width=8)
    cfg = DistillConfig(epochs=1, lr=0.05, progress=False, bf16=False)
    distill_(student, teacher, train, None, cfg, log=lambda s: None)
    assert all(p.requires_grad for p in teacher.parameters())  # frozen only while distilling
    with pytest.raises(ConfigError, match="requires_grad=False"):
        distill_(student.requires_grad_(False), teacher, train, None, cfg, log=lambda s: None)
