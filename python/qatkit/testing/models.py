"""Reference CNN architectures in the layout users bring (torchvision's module structure, written
here because PyPI's torchvision does not import beside the CPU torch this project pins).

``resnet18`` keeps torchvision's ``BasicBlock`` (``conv1``/``bn1``/``relu``/``conv2``/``bn2`` as
attributes, called from Python code, a ``downsample`` ``Sequential``, an in-place residual add) —
the structure where Conv->BN pairs are not neighbours in an ``nn.Sequential``.
``mobilenet_v2`` keeps torchvision's ``Conv2dNormActivation`` / ``InvertedResidual`` layout
(depthwise convs, ReLU6, residual adds). ``width`` scales every channel count so tests can run
small copies; ``small_input=True`` uses a CIFAR-style stem for 32x32 inputs.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "resnet18", "InvertedResidual", "MobileNetV2", "mobilenet_v2", "leaf_zoo", "TinyAttention"]


def _c(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, layers: List[int], num_classes: int = 1000, width: float = 1.0, small_input: bool = False):
        super().__init__()
        self.inplanes = _c(64, width)
        if small_input:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(_c(64, width), layers[0])
        self.layer2 = self._make_layer(_c(128, width), layers[1], stride=2)
        self.layer3 = self._make_layer(_c(256, width), layers[2], stride=2)
        self.layer4 = self._make_layer(_c(512, width), layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: float = 1.0, small_input: bool = False) -> ResNet:
    """ResNet-18 (torchvision's layout: 20 BatchNorms, 3 of them in ``downsample`` Sequentials)."""
    return ResNet([2, 2, 2, 2], num_classes, width, small_input)


class _ConvBNReLU(nn.Sequential):
    """torchvision's ``Conv2dNormActivation`` with ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU(cin, hidden, 1))
        layers += [
            _ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width: float = 1.0, small_input: bool = False):
        super().__init__()
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
        settings += [(6, 320, 1, 1)]
        cin = _c(32, width)
        features: List[nn.Module] = [_ConvBNReLU(3, cin, 3, 1 if small_input else 2)]
        for t, c, n, s in settings:
            cout = _c(c, width)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _c(1280, max(1.0, width))
        features.append(_ConvBNReLU(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width: float = 1.0, small_input: bool = False) -> MobileNetV2:
    """MobileNetV2 (torchvision's layout; 52 BatchNorms, every one inside an ``nn.Sequential``)."""
    return MobileNetV2(num_classes, width, small_input)


class TinyAttention(nn.Module):
    """A Linear, an ``nn.MultiheadAttention`` (batch first, 4 heads) with a residual, a ReLU and a
    Linear head: inputs [batch, tokens, 16], outputs [batch, tokens, 8]."""

    def __init__(self):
        super().__init__()
        self.inp, self.att, self.out = nn.Linear(16, 32), nn.MultiheadAttention(32, 4, batch_first=True), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(torch.relu(self.att(h, h, h)[0] + h))


def leaf_zoo() -> List[tuple]:
    """``nn.Sequential`` models that hold every activation, pooling and float module
    ``qatkit.load`` / ``qatkit::nn::load`` rebuild, with non-default arguments (a ceil-mode max
    pool, an average pool with ``divisor_override``, a float embedding with ``max_norm``, a LayerNorm
    without bias):
    ``[(name, model, calibration batch, test batch)]``, seeded. The test batch differs from the
    calibration batch (an embedding's unseen rows are renormalized on first use)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.1),
        nn.MaxPool2d(3, stride=2, ceil_mode=True), nn.Conv2d(8, 8, 3, padding=1), nn.PReLU(8),
        nn.AvgPool2d(2, divisor_override=3), nn.Conv2d(8, 8, 1), nn.Hardswish(), nn.Conv2d(8, 8, 1), nn.Hardsigmoid(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.ELU(0.5), nn.Linear(16, 16),
        nn.Hardtanh(-0.5, 2.0), nn.Linear(16, 16), nn.Mish(), nn.Linear(16, 10), nn.LogSoftmax(dim=1))
    conv1d = nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1), nn.PReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 3), nn.SiLU(),
        nn.AvgPool1d(2, ceil_mode=True), nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(24, 10), nn.Softmax(dim=-1))
    emb = nn.Sequential(nn.Embedding(50, 16, max_norm=1.0), nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32, bias=False),
                        nn.GELU(), nn.Linear(32, 4))
    with torch.no_grad():
        emb[3].weight.uniform_(0.5, 1.5, generator=g)
    return [
        ("conv2d", conv.eval(), torch.randn(8, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)),
        ("conv1d", conv1d.eval(), torch.randn(8, 3, 20, generator=g), torch.randn(2, 3, 20, generator=g)),
        ("embedding", emb.eval(), torch.randint(0, 25, (8, 4), generator=g), torch.arange(48).reshape(12, 4)),
    ]
