"""Model zoo: CIFAR ResNet-20/32/56/110, WRN-28-k, VGG-16, MobileNetV2, plus tiny test models.

>>> import edgecompress.models as M
>>> m = M.create_model("resnet20"); M.list_models("resnet*")[:2]
['resnet110', 'resnet20']
"""

from edgecompress.models.registry import create_model, list_models, register_model
from edgecompress.models import resnet_cifar, wrn, vgg, mobilenetv2, tiny  # noqa: F401  (registers)
from edgecompress.models.pretrained import load_pretrained, pretrained_path

__all__ = ["create_model", "list_models", "register_model", "load_pretrained", "pretrained_path"]
