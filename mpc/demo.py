"""`mpc demo`: private inference on a real data set, beside plaintext torch and CrypTen.

Party 1 (say, a hospital) holds the test images of scikit-learn's digits data set; party 0
(a model vendor) holds a linear classifier it trained on its own data. Three parties
compute the logits X @ W + b on secret shares; only the caller sees the result. Secure
training comes with a later issue: until then this is what the runtime can do.
"""

from __future__ import annotations

import time

import torch

from mpc import reference
from mpc.launcher import LocalCluster


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_load  # ships with scikit-learn, no download

    data = sk_load()
    x = torch.tensor(data.data, dtype=torch.float64) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def train_plaintext(x: torch.Tensor, y: torch.Tensor, epochs: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """The model owner's own (plaintext) training of a softmax-regression classifier."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.weight.detach().T.contiguous(), model.bias.detach().clone()


def main(parties: int = 3, crypten: bool = True) -> int:
    x_train, y_train, x_test, y_test = load_digits()
    w, b = train_plaintext(x_train, y_train)
    plain = x_test @ w + b
    print(f"digits: {len(x_train)} training rows (party 0's model), {len(x_test)} test rows (party 1's data)")

    start = time.perf_counter()
    with LocalCluster(n_parties=parties) as cluster:
        started = time.perf_counter() - start
        (cluster.share(torch.ones(2), 0) * cluster.share(torch.ones(2), 1)).reveal()  # warm up the streams
        logits = cluster.share(x_test, owner=1) @ cluster.share(w, owner=0) + cluster.share(b, owner=0)
        secure = logits.reveal()
        stats = cluster.last_stats
    rows = [("plaintext torch", plain, None)]
    rows.append(("mpc (secret shares)", secure,
                 f"online {max(s.online_s for s in stats) * 1e3:.1f} ms, {max(s.rounds for s in stats)} rounds, "
                 f"{max(s.bytes_sent for s in stats) / 1e6:.2f} MB/party, cluster start {started:.1f} s"))
    if crypten:
        ref = reference.run("linear", [x_test, w, b], owners=[1, 0, 0], world_size=parties, reps=1)
        rows.append(("CrypTen 0.4.1", ref["value"], f"{ref['seconds'] * 1e3:.1f} ms, {ref['rounds']} rounds"))
    print(f"\n{'':22}{'accuracy':>9}  {'max |logit - plaintext|':>24}  cost")
    for name, out, cost in rows:
        acc = (out.argmax(1) == y_test).double().mean().item()
        err = (out - plain).abs().max().item()
        print(f"{name:22}{acc:9.4f}  {err:24.2e}  {cost or ''}")
    return 0
