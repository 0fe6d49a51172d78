"""Distillation losses: Hinton KD with temperature, hard-label CE, FitNets feature hints."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecompress.errors import ConfigError, ModelInputError


def _check_temperature(t: float) -> None:
    if not t > 0:
        raise ConfigError(f"temperature must be > 0 (softmax(z/T) is undefined otherwise), got {t}; "
                          "use e.g. temperature=4")


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ModelInputError(f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student.shape)} "
                              "differ in shape; distil from a teacher with the same classes (output width)")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over the batch.

    The T² factor keeps the gradient magnitude independent of T: ∂/∂z_s = T·(softmax(z_s/T) −
    softmax(z_t/T)) / batch.
    """
    _check_temperature(temperature)
    _check_logits(student_logits, teacher_logits)
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def check_weights(alpha: float, beta: float) -> None:
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise ConfigError(f"alpha={alpha}, beta={beta}: the loss α·CE + β·KD needs non-negative weights, not "
                          "both zero; e.g. alpha=0.1, beta=0.9 (or alpha='auto')")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """α·CE(y, p_s) + β·KD(p_t, p_s); plain CE when there is no teacher."""
    if teacher_logits is None:
        return F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    check_weights(alpha, beta)
    loss = beta * kd_loss(student_logits, teacher_logits, temperature)
    if alpha:
        loss = loss + alpha * F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return loss


class FeatureHints(nn.Module):
    """FitNets hints (Romero et al. 2015): MSE between a 1×1-conv adapter of a student layer's
    output and the teacher layer's output, for each ``(student_layer, teacher_layer)`` pair.

    Adapters are created on the first batch with the right widths. Where the student was pruned
    by edgecompress it knows which of the teacher's channels it kept
    (``student.edgecompress_kept_channels``); the adapter then starts as that selection (channel i
    of the student feeds teacher channel kept[i], the removed ones get 0), so the hint loss starts
    at what pruning lost instead of at a random projection's error.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs):
        super().__init__()
        self.pairs = [(p, p) if isinstance(p, str) else tuple(p) for p in pairs]
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        missing = [s for s, _ in self.pairs if s not in s_mods] + [t for _, t in self.pairs if t not in t_mods]
        if missing:
            raise ConfigError(f"hint layer(s) {missing} not found; pass names from model.named_modules(), "
                              f"e.g. {[n for n, _ in list(student.named_children())[:4]]}")
        self.kept = dict(getattr(student, "edgecompress_kept_channels", {}) or {})
        self._s_names = {s: [n for n in s_mods if n == s or n.startswith(s + ".")] for s, _ in self.pairs}
        self.adapters = nn.ModuleDict()
        self.feats: dict[str, torch.Tensor] = {}
        self._handles = []
        for i, (s, t) in enumerate(self.pairs):
            self._handles.append(s_mods[s].register_forward_hook(self._grab(f"s{i}")))
            self._handles.append(t_mods[t].register_forward_hook(self._grab(f"t{i}")))

    def _grab(self, key):
        def hook(_m, _i, out):
            self.feats[key] = out
        return hook

    def _kept_for(self, student_layer: str, cs: int, ct: int) -> list[int] | None:
        """The kept teacher channels of the last layer inside ``student_layer`` that pruning recorded
        with this width (e.g. the block's last BatchNorm for a residual block)."""
        for name in reversed(self._s_names[student_layer]):
            k = self.kept.get(name)
            if k is not None and len(k) == cs and max(k) < ct:
                return list(k)
        return None

    def _adapter(self, i: int, fs: torch.Tensor, ft: torch.Tensor) -> nn.Module:
        key = str(i)
        if key not in self.adapters:
            if fs.ndim != ft.ndim or fs.shape[2:] != ft.shape[2:]:
                raise ModelInputError(f"hint {self.pairs[i]}: student feature {tuple(fs.shape)} and teacher feature "
                                      f"{tuple(ft.shape)} differ in spatial size; pick layers at the same resolution")
            cs, ct = fs.shape[1], ft.shape[1]
            conv = nn.Conv2d(cs, ct, 1, bias=False) if fs.ndim == 4 else nn.Linear(cs, ct, bias=False)
            kept = self._kept_for(self.pairs[i][0], cs, ct)
            if kept is not None:
                with torch.no_grad():
                    w = torch.zeros(ct, cs)
                    w[kept, torch.arange(cs)] = 1.0
                    conv.weight.copy_(w.view_as(conv.weight))
            self.adapters[key] = conv.to(fs.device)
        return self.adapters[key]

    def materialize(self, student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> None:
        """Create the adapters from one forward (call before building the optimiser)."""
        with torch.no_grad():
            student(x)
            teacher(x)
        for i in range(len(self.pairs)):
            self._adapter(i, self.feats[f"s{i}"], self.feats[f"t{i}"])
        self.feats.clear()

    def loss(self) -> torch.Tensor:
        total = 0.0
        for i in range(len(self.pairs)):
            fs, ft = self.feats.pop(f"s{i}"), self.feats.pop(f"t{i}")
            a = self._adapter(i, fs, ft)
            total = total + F.mse_loss(a(fs).float(), ft.detach().float())
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
