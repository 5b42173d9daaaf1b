"""TempCNN, the temporal convolutional network of Pelletier, Webb and Petitjean (2019).

Input (batch, channels, time steps); ``conv_layers`` blocks of Conv1d (same-length padding)
► batch norm ► ReLU ► dropout, then flatten ► dense ► batch norm ► ReLU ► dropout ► one logit
per class. Softmax is applied by the caller (training uses the logits with cross-entropy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    channels: int
    time_steps: int
    classes: int
    conv_layers: int = 3
    conv_filters: int = 64
    kernel_size: int = 5
    dense_units: int = 256
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    def flops_per_sample(self) -> int:
        """Multiply-adds × 2 of one forward pass (convolutions and dense layers)."""
        flops = 0
        c_in = self.channels
        for _ in range(self.conv_layers):
            flops += 2 * c_in * self.conv_filters * self.kernel_size * self.time_steps
            c_in = self.conv_filters
        flops += 2 * c_in * self.time_steps * self.dense_units
        flops += 2 * self.dense_units * self.classes
        return flops


def _conv_block(c_in: int, c_out: int, kernel: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
        nn.Dropout(dropout),
    )


class TempCNN(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        blocks, c_in = [], arch.channels
        for _ in range(arch.conv_layers):
            blocks.append(_conv_block(c_in, arch.conv_filters, arch.kernel_size, arch.dropout))
            c_in = arch.conv_filters
        self.convolutions = nn.Sequential(*blocks)
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * arch.time_steps, arch.dense_units),
            nn.BatchNorm1d(arch.dense_units),
            nn.ReLU(),
            nn.Dropout(arch.dropout),
        )
        self.logits = nn.Linear(arch.dense_units, arch.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.dense(self.convolutions(x)))
