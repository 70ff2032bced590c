"""MobileNetV1 (Howard et al., 2017), width multiplier 1.0, 224x224 input.

torchvision has no MobileNetV1, so it is defined here: a 3x3 stride-2 stem and
13 depthwise-separable blocks (depthwise 3x3 + pointwise 1x1, each followed by
batch norm and ReLU), global average pooling and a linear classifier. About
0.57 G multiply-accumulates in its convolutions and 4.2 M parameters.
"""

from __future__ import annotations

from torch import nn

# (pointwise output channels, depthwise stride) of the 13 separable blocks.
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, stem_channels: int = 32):
        super().__init__()
        layers = [_conv_bn(3, stem_channels, 3, 2)]
        cin = stem_channels
        for cout, stride in BLOCKS:
            layers.append(_conv_bn(cin, cin, 3, stride, groups=cin))  # depthwise
            layers.append(_conv_bn(cin, cout, 1, 1))  # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = self.pool(x).flatten(1)
        return self.fc(x)
