"""Small CAM-compatible classifiers for the shapes data set (:mod:`lamcam.zoo.shapes`).

Both networks are strictly ``conv features -> global average pool -> linear``, so class
activation maps (CAM, Grad-CAM, Grad-CAM++) of the last conv layer are well defined, and the
last feature map keeps an 8x8 grid for a 64x64 input (total stride 8), fine enough to separate up
to four instances.

Input: float ``(B, 3, H, W)`` RGB in ``[0, 1]``; the models normalise internally
(``(x - 0.5) / 0.25``), so callers never need to. Output: logits ``(B, num_classes)``.

* :class:`ShapesVGG` -- plain conv/BN/ReLU stack with max-pools, in-place ReLUs
  (``self.features``), CAM layer ``features.20`` (the last ReLU, ``(B, 128, H/8, W/8)``).
* :class:`ShapesResNet` -- ResNet-style stem (conv + max-pool) + three stages of
  :class:`BasicBlock` (``layer1..layer3``, one block each by default), CAM layer ``layer3``
  (``(B, 128, H/8, W/8)``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ShapesVGG", "ShapesResNet", "BasicBlock", "VGG_DEFAULT_LAYER", "RESNET_DEFAULT_LAYER"]

_MEAN, _STD = 0.5, 0.25


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ShapesVGG(nn.Module):
    """VGG-style classifier: ``features`` (conv-BN-ReLU x6, 3 max-pools) -> ``pool`` -> ``fc``.

    Shapes for a ``(B, 3, 64, 64)`` input: 64x64x32 -> pool 32x32 -> 32x32x64 -> pool 16x16 ->
    16x16x96 x2 -> pool 8x8 -> 8x8x128 x2 = ``features`` output ``(B, 128, 8, 8)`` ->
    ``pool`` ``(B, 128, 1, 1)`` -> ``fc`` ``(B, num_classes)``.

    Args:
        num_classes: number of output logits.
        width: channels of the first conv; later stages use 2x, 3x and 4x this.
    """

    def __init__(self, num_classes: int = 6, width: int = 32) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        layers += _conv_bn_relu(3, w)  # 0..2
        layers += [nn.MaxPool2d(2)]  # 3
        layers += _conv_bn_relu(w, 2 * w)  # 4..6
        layers += [nn.MaxPool2d(2)]  # 7
        layers += _conv_bn_relu(2 * w, 3 * w)  # 8..10
        layers += _conv_bn_relu(3 * w, 3 * w)  # 11..13
        layers += [nn.MaxPool2d(2)]  # 14
        layers += _conv_bn_relu(3 * w, 4 * w)  # 15..17
        layers += _conv_bn_relu(4 * w, 4 * w)  # 18..20
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, num_classes)``."""
        x = self.features((x - _MEAN) / _STD)
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``(B, cin, H, W)`` -> ``(B, cout, H / stride, W / stride)``; the shortcut is a 1x1 conv + BN
    when the shape changes, identity otherwise.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, H, W)`` -> ``(B, cout, H / stride, W / stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ShapesResNet(nn.Module):
    """Small ResNet: ``stem`` -> ``layer1`` -> ``layer2`` -> ``layer3`` -> ``pool`` -> ``fc``.

    Shapes for a ``(B, 3, 64, 64)`` input: ``stem`` (3x3 conv, BN, ReLU, 2x2 max-pool)
    ``(B, w, 32, 32)`` -> ``layer1`` ``(B, w, 32, 32)`` -> ``layer2`` ``(B, 2w, 16, 16)`` ->
    ``layer3`` ``(B, 4w, 8, 8)`` -> ``pool`` ``(B, 4w, 1, 1)`` -> ``fc`` ``(B, num_classes)``.
    Each stage has ``blocks`` :class:`BasicBlock` modules.

    Args:
        num_classes: number of output logits.
        width: channels ``w`` of the stem and ``layer1``.
        blocks: basic blocks per stage.
    """

    def __init__(self, num_classes: int = 6, width: int = 32, blocks: int = 1) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.layer1 = self._stage(w, w, blocks, stride=1)
        self.layer2 = self._stage(w, 2 * w, blocks, stride=2)
        self.layer3 = self._stage(2 * w, 4 * w, blocks, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)
        _init(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        mods = [BasicBlock(cin, cout, stride)]
        mods += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, num_classes)``."""
        x = self.stem((x - _MEAN) / _STD)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: CAM target layers (dotted module names) of the two architectures.
VGG_DEFAULT_LAYER = "features.20"
RESNET_DEFAULT_LAYER = "layer3"
