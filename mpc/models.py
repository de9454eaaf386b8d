"""The reference networks of BENCHMARKS.md and the tests, as ordinary torch modules.

`mpc bench`, `mpc demo` and the tests use these; reference.py builds the same networks
by hand in CrypTen from their weights (`crypten_args` gives them in its order).
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """mlp_infer: 784-128-128-10 with ReLU."""

    def __init__(self, sizes=(784, 128, 128, 10)):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    """cnn_infer: conv(1→16, 5x5) ReLU avgpool(2) conv(16→16, 5x5) ReLU avgpool(2)
    linear(256→100) ReLU linear(100→10), on 1x28x28."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 5), nn.Conv2d(16, 16, 5)
        self.pool = nn.AvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(256, 100), nn.Linear(100, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class ResCNN(nn.Module):
    """A small residual CNN with BatchNorm: conv-BN-ReLU, a residual block of conv-BN-ReLU
    with an identity path, max-pool, global average pool, linear."""

    def __init__(self, channels: int = 8, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.pool, self.gap = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.gap(self.pool(x)).flatten(1))


class DigitsCNN(nn.Module):
    """For scikit-learn's 8x8 digits: conv(1→8, 3x3, pad 1) ReLU avgpool(2) linear(128→10)."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.AvgPool2d(2), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (a fresh
    one is the identity, which would hide folding mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.view(-1, 1, 1, 1), (conv.bias - bn.running_mean) * scale + bn.bias


@torch.no_grad()
def crypten_args(model: nn.Module) -> tuple[str, list[torch.Tensor]]:
    """The reference.OPS entry that builds `model` in CrypTen, and its weights in order
    (BatchNorm folded into the convolution before it, by hand)."""
    if isinstance(model, MLP):
        return "mlp3", [t for fc in (model.fc1, model.fc2, model.fc3) for t in (fc.weight, fc.bias)]
    if isinstance(model, CNN):
        return "cnn", [model.conv1.weight, model.conv1.bias, model.conv2.weight, model.conv2.bias,
                       model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias]
    if isinstance(model, ResCNN):
        return "rescnn", [*_folded(model.conv1, model.bn1), *_folded(model.conv2, model.bn2),
                          model.fc.weight, model.fc.bias]
    if isinstance(model, DigitsCNN):
        return "digits_cnn", [model.conv.weight, model.conv.bias, model.fc.weight, model.fc.bias]
    raise ValueError(f"no CrypTen counterpart for {type(model).__name__}")
