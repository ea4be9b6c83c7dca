"""A user's own classifier for benchmarks/import_screen.py: a plain VGG-style CNN that knows nothing of l2ood,
imported with ``l2ood import --factory _usernet:build``."""

from __future__ import annotations

from torch import Tensor, nn


class UserNet(nn.Module):
    """Three conv blocks (conv-BN-ReLU ×2, max-pool), global average pool, a hidden linear layer, a linear head."""

    def __init__(self, classes: int = 10, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(3):
            c = width * 2**i
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2) if i < 2 else nn.AdaptiveAvgPool2d(1))
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c_in, 256), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(256, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.hidden(self.features(x)))


def build(classes: int = 10, width: int = 32) -> UserNet:
    """The factory ``l2ood import`` calls (``--kwargs '{"classes": 10, "width": 32}'``)."""
    return UserNet(classes, width)
