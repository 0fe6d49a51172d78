"""Training and knowledge distillation: Hinton KD, FitNets hints, eq. 7 weight allocation,
teacher-assistant chains, DDP under torchrun."""

from edgecompress.distill.allocation import allocate_weights, resolve_weights
from edgecompress.distill.chain import teacher_assistant_chain
from edgecompress.distill.losses import FeatureHints, distillation_loss, kd_loss
from edgecompress.distill.trainer import DistillConfig, TrainConfig, distill_, fit

__all__ = ["DistillConfig", "FeatureHints", "TrainConfig", "allocate_weights", "distill_", "distillation_loss", "fit",
           "kd_loss", "resolve_weights", "teacher_assistant_chain"]
