"""Training and knowledge distillation."""

from edgecompress.distill.losses import distillation_loss, kd_loss
from edgecompress.distill.trainer import DistillConfig, TrainConfig, distill_, fit

__all__ = ["DistillConfig", "TrainConfig", "distill_", "fit", "distillation_loss", "kd_loss"]
