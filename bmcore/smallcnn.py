"""The seeds' from-scratch baseline (``small_cnn`` in ``bmcore.backbones``, registered with timm there as
``bm_small_cnn`` so that it is created by name like the others). Its own module so that the registry imports no torch."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv(16)-pool-conv(32)-pool-conv(64)-pool-dropout-dense(128)-out, as in seeds 002/003."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, **_: object):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # Adaptive pooling keeps the dense layer independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.pre_logits = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(64 * 36, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *_: object, **__: object) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(128, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
