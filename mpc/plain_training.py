"""The same training as a secure job, in plaintext torch: the yardstick for every secure run.

`train_plaintext` starts from the same initial weights, joins the parties' data in the
same order (rows or columns by party id, labels from the label owner), normalises the
same way, draws the same batches (mpc.training.batch_order, drop-last) and applies the
same update: the gradient of the batch-mean loss (for MSE, summed over output columns,
as the compiled step does), then SGD with momentum and weight decay as torch.optim.SGD,
or Adam with the bias correction and the small constant inside the square root that the
fixed-point program uses. It runs in float64. `mpc train`, `mpc demo`, the bench and the
tests all compare against it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mpc.compiler.training import SGD, Adam
from mpc.training import batch_order


@dataclass
class PlainResult:
    model: torch.nn.Module  # float64 copy, trained
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, batch loss) for every step
    accuracy: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy) where evaluated
    steps: int = 0


def assemble(parts: dict[int, tuple[torch.Tensor, torch.Tensor | None]], split: str = "rows",
             label_owner: int | None = None, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint data set exactly as share_data builds it from the parties' parts."""
    pids = sorted(parts)
    xs = [torch.as_tensor(parts[p][0], dtype=torch.float64) for p in pids]
    if split == "rows":
        x = torch.cat(xs, 0)
        y = torch.cat([torch.as_tensor(parts[p][1]) for p in pids], 0)
    else:
        x = torch.cat(xs, 1)
        y = torch.as_tensor(parts[label_owner][1])
    if normalize:
        mean = x.mean(0, keepdim=True)
        x = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(0, keepdim=True) + 1e-5)
    return x, y


def _loss(kind: str, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss whose gradient the secure step follows, the loss value it reveals)."""
    if kind == "cross_entropy":
        value = F.cross_entropy(z, y.long())
        return value, value
    y = y.view(z.shape).to(z.dtype)
    if kind == "bce_with_logits":
        return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / len(z), \
            F.binary_cross_entropy_with_logits(z, y)
    return ((z - y) ** 2).sum() / len(z), F.mse_loss(z, y)


def train_plaintext(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str = "cross_entropy",
                    optimizer=None, epochs: int = 1, batch_size: int = 64, seed: int = 0,
                    evaluate: tuple[torch.Tensor, torch.Tensor] | None = None, frac_bits: int = 16,
                    steps: int | None = None) -> PlainResult:
    """Train a float64 copy of `model` as the secure job would; `evaluate=(x, y)` records
    test accuracy after every epoch; `steps` stops after that many steps in total."""
    net = copy.deepcopy(model).double()
    params = [p for p in net.parameters()]
    optimizer = optimizer or SGD(lr=0.1)
    if isinstance(optimizer, SGD):
        opt = torch.optim.SGD(params, lr=optimizer.lr, momentum=optimizer.momentum,
                              weight_decay=optimizer.weight_decay)
    else:
        opt = _Adam(params, optimizer, frac_bits)
    result = PlainResult(net)
    n_rows = len(x)
    per_epoch = n_rows // batch_size
    total = epochs * per_epoch if steps is None else min(steps, epochs * per_epoch)
    step = 0
    for epoch in range(epochs):
        if step >= total:
            break
        order = batch_order(n_rows, seed, epoch)
        for k in range(per_epoch):
            if step >= total:
                break
            rows = order[k * batch_size:(k + 1) * batch_size]
            opt.zero_grad()
            grad_loss, value = _loss(loss, net(x[rows].to(torch.float64)), y[rows])
            grad_loss.backward()
            opt.step()
            result.losses.append((step, float(value.detach())))
            step += 1
        if evaluate is not None:
            result.accuracy.append((epoch, accuracy(net, *evaluate)))
    result.steps = step
    return result


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """In eval mode (BatchNorm uses, and does not update, its running statistics)."""
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        return float((model(x.to(dtype)).argmax(1) == y.long()).double().mean())
    finally:
        model.train(was_training)


class _Adam:
    """Adam as the compiled step computes it: m/(sqrt(v + 2^-f) + eps_t) with the bias
    correction folded into lr_t and eps_t (mpc.compiler.training.TrainingProgram)."""

    def __init__(self, params, cfg: Adam, frac_bits: int):
        self.params, self.cfg, self.tiny = params, cfg, 2.0 ** -frac_bits
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.cfg.betas
        lr_t = self.cfg.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        eps_t = self.cfg.eps * math.sqrt(1 - b2 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).add_(p.grad * p.grad, alpha=1 - b2)
            p.sub_(lr_t * m / (torch.sqrt(v + self.tiny) + eps_t))
