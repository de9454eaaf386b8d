"""Shared by the capture tests: the supported example models, and a plaintext simulator
that evaluates a compiled Program node by node in float64 with torch (parameter inputs
take the compiled model's plaintext values), independent of MPC.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from mpc.compiler import OPS
from mpc.compiler.layer_ops import avg_pool2d_factor, pool_params


# -- the supported models ----------------------------------------------------------------------------


def mlp():
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(16, 16, 5), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 10))


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


class ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.bn3 = nn.BatchNorm2d(8)  # after a residual addition: nothing to fold into
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)
        self.bn4 = nn.BatchNorm1d(10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        y = F.relu(self.bn2(self.conv2(x))) + x
        y = self.gap(self.bn3(y))
        return self.bn4(self.fc(torch.flatten(y, 1)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.grouped = nn.Conv1d(6, 6, 3, padding=2, dilation=2, groups=3)
        self.fc = nn.Linear(6 * 8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(self.grouped(x).flatten(1))


class Misc(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.Sigmoid()
        self.tanh = nn.Tanh()
        self.softmax = nn.Softmax(dim=-1)
        self.log_softmax = nn.LogSoftmax(dim=1)
        self.drop = nn.Dropout(0.3)
        self.ident = nn.Identity()
        self.flat = nn.Flatten()
        self.register_buffer("offset", torch.linspace(-1, 1, 12))

    def forward(self, x):
        a = self.act(self.fc(x))
        b = self.tanh(x) * 2.0 + 1
        c = torch.cat([a, b], dim=1)
        d = self.softmax(c) + self.log_softmax(c) - self.offset
        e = d.view(2, 3, 4).permute(0, 2, 1).transpose(1, 2)
        f = torch.matmul(e, e.transpose(1, 2)) / 4
        g = self.ident(self.drop(self.flat(f))).mean(dim=1, keepdim=True)
        return 1 - g + x.sum(1, keepdim=True) / 3 + x[:, 1:3].exp() * 0.5


class Functional(nn.Module):
    """The torch.nn.functional and tensor-method forms of the layers, with plain parameters."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 3, 3) / 3)
        self.b = nn.Parameter(torch.randn(4))
        self.lw = nn.Parameter(torch.randn(5, 16) / 4)
        self.lb = nn.Parameter(torch.randn(5))
        self.register_buffer("rm", torch.randn(4) / 4)
        self.register_buffer("rv", torch.rand(4) + 0.5)

    def forward(self, x):
        y = F.batch_norm(F.conv2d(x, self.w, self.b, padding=1), self.rm, self.rv, training=False)
        y = F.max_pool2d(y.relu(), 2) + F.avg_pool2d(torch.relu(y), 2)
        y = F.adaptive_avg_pool2d(F.dropout(y, 0.5, training=False), (2, 2))
        z = torch.flatten(y, 1)
        z = F.linear(z, self.lw, self.lb).sigmoid() + torch.tanh(z[:, :5]) + x.mean()
        z = z + torch.sum(x, dim=(1, 2, 3)).unsqueeze(1) / 8 + x[:, 0, 0, :4].sum(-1, keepdim=True)
        z = z.softmax(-1) * F.log_softmax(z, dim=-1) + z.t().t().reshape(2, 5).squeeze()
        return torch.cat([z, z @ torch.ones(5, 5, dtype=x.dtype)], -1).exp().clamp(-1, 1) + F.hardtanh(z.repeat(1, 2))


def models():
    return {
        "mlp": (mlp(), torch.randn(4, 784)),
        "cnn": (cnn(), torch.randn(2, 1, 28, 28)),
        "residual": (randomize_bn(ResidualCNN()), torch.randn(2, 1, 8, 8)),
        "conv1d": (randomize_bn(Conv1dNet()), torch.randn(2, 3, 16)),
        "misc": (Misc(), torch.randn(2, 6)),
        "functional": (Functional(), torch.randn(2, 2, 4, 4)),
    }


# -- the plaintext simulator ----------------------------------------------------------------------------


def _avg_pool(a, x):
    kernel, stride, padding = pool_params(a)
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    sums = padded.unfold(-2, kernel[0], stride[0]).unfold(-2, kernel[1], stride[1]).sum(dim=(-1, -2))
    return sums * avg_pool2d_factor(a, tuple(x.shape[-2:]))


def _conv(a, x, w):
    return F.conv2d(x, w, None, a["stride"], a["padding"], a["dilation"], a["groups"])


FLOAT_OPS = {
    "add_public": lambda a, x: x + a["value"],
    "mul_public": lambda a, x: x * a["value"],
    "matmul_public": lambda a, x: x @ a["value"] if a["side"] == "right" else a["value"] @ x,
    "mul": lambda a, x, y: x * y,
    "matmul": lambda a, x, y: x @ y,
    "div": lambda a, x, y: x / y,
    "square": lambda a, x: x * x,
    "conv2d": _conv,
    "conv2d_public": lambda a, x: _conv(a, x, a["value"]),
    "relu": lambda a, x: torch.relu(x),
    "sigmoid": lambda a, x: torch.sigmoid(x),
    "tanh": lambda a, x: torch.tanh(x),
    "exp": lambda a, x: torch.exp(x),
    "reciprocal": lambda a, x: 1 / x,
    "softmax": lambda a, x: torch.softmax(x, a["dim"]),
    "log_softmax": lambda a, x: torch.log_softmax(x, a["dim"]),
    "mean": lambda a, x: x.mean(dim=a["dims"], keepdim=a["keepdim"]) if a["dims"] else x.mean(),
    "max_pool2d": lambda a, x: F.max_pool2d(x, a["kernel"], a["stride"], a["padding"]),
    "avg_pool2d": _avg_pool,
    "clamp": lambda a, x: x.clamp(a["low"] if "low" in a else None, a["high"] if "high" in a else None),
    "max": lambda a, x: x.amax(dim=a["dim"], keepdim=a["keepdim"]),
}
LOCAL_OPS = ("add", "sub", "neg", "reshape", "transpose", "permute", "expand", "getitem", "cat", "stack", "sum")


def simulate(compiled, x: torch.Tensor) -> torch.Tensor:
    """The program's output in float64 plaintext."""
    program = compiled.program
    values: dict[int, torch.Tensor] = {}
    for node in program.nodes:
        args = [values[i] for i in node.inputs]
        if node.op == "input":
            values[node.id] = x.double() if node.name == compiled.input_name else compiled.params[node.name].double()
        elif node.op in LOCAL_OPS:
            values[node.id] = OPS[node.op].lower(None, node.attrs, *args)  # a local op is the same torch code
        else:
            assert node.op in FLOAT_OPS, f"the simulator has no rule for {node.op}"
            values[node.id] = FLOAT_OPS[node.op](node.attrs, *args)
        assert tuple(values[node.id].shape) == tuple(node.shape), node.describe()
    return values[program.outputs[0]]


def reference(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x.double())
