"""Small CNNs trained from scratch on the CPU, with a CAM head.

The classifier is a 1x1 convolution applied *before* global average pooling, so the network's
second output is the class activation map itself (Zhou et al. 2016) and its first output, the
logits, is exactly that map's spatial mean. Heatmaps then need no gradients and work the same
on ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class CamNet(nn.Module):
    """ResNet-style: stem (stride 2), then one stage (stride 2) per width; output stride 32."""

    def __init__(self, in_channels: int, classes: int, widths: list[int], blocks: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, widths[0], 2)]
        cin = widths[0]
        for cout, count in zip(widths[1:], blocks, strict=True):
            layers.append(BasicBlock(cin, cout, 2))
            layers.extend(BasicBlock(cout, cout, 1) for _ in range(count - 1))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.classifier(self.dropout(self.features(x)))
        return cam.mean(dim=(2, 3)), cam
