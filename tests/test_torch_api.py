"""Secret tensors speak torch: one table of torch expressions, each run on plaintext float64
tensors and on secret tensors (alone and mixed with public ones), compared within the
tolerance stated in its row (absolute, on the operands below), at 2 and 3 parties in
memory and, for a few rows, over gRPC. The table is the documentation of what is
supported: `markdown()` renders it, and README.md must print exactly that. Errors and
semantics a row cannot show (in-place rebinding, rounds) are in test_torch_api_semantics.py.

    python -c "from tests.test_torch_api import markdown; print(markdown())"
"""

from __future__ import annotations

import ast
import pathlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import mpc
from mpc.api import SecretTensor
from tests.conftest import ULP, assert_close


def seeded_randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


OPERANDS = {  # name: (value, legend)
    "x": (seeded_randn(4, 5, seed=1) * 2, "4×5, N(0, 4)"),
    "y": (seeded_randn(4, 5, seed=2) * 0.8, "4×5, N(0, 0.64)"),
    "p": (torch.rand(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 9.5 + 0.5,
          "4×5, U(0.5, 10)"),
    "c": (seeded_randn(4, 5, seed=4) > 0, "4×5 bool, always public"),
    "m": (seeded_randn(5, 3, seed=5), "5×3"),
    "w": (seeded_randn(3, 5, seed=6), "3×5 (a linear layer's weight)"),
    "b": (seeded_randn(3, seed=7), "3"),
    "img": (seeded_randn(2, 3, 6, 6, seed=8), "2×3×6×6"),
    "k": (seeded_randn(4, 3, 3, 3, seed=9) * 0.5, "4×3×3×3 (a conv kernel)"),
    "kb": (seeded_randn(4, seed=10), "4"),
}
ALWAYS_PUBLIC = {"c"}


@dataclass(frozen=True)
class Row:
    expr: str  # a torch expression over the operands' names
    tol: float  # max absolute error against plaintext torch in float64
    secret: str = ""  # variants, "|"-separated: which operands are secret (the rest public); default all

    def operands(self) -> list[str]:
        names = {n.id for n in ast.walk(ast.parse(self.expr)) if isinstance(n, ast.Name)}
        return [k for k in OPERANDS if k in names]

    def variants(self) -> list[tuple[str, ...]]:
        if self.secret:
            return [tuple(v.split()) for v in self.secret.split("|")]
        return [tuple(k for k in self.operands() if k not in ALWAYS_PUBLIC)]


EXACT = 0.0  # comparisons, indices and introspection: bit-exact
ENC = ULP / 2  # the operands' own fixed-point rounding only (local ops)
P = 1e-4  # one product of these operands (truncation, plus encoding of both factors)
TABLE = [
    "arithmetic, either operand secret",
    Row("x + y", ULP, "x y | x | y"),
    Row("torch.add(x, y, alpha=2)", 2 * ULP, "x y | y"),
    Row("x - y", ULP, "x y | y"),
    Row("torch.sub(x, 1.5)", ULP),
    Row("-x", ENC),
    Row("torch.neg(x)", ENC),
    Row("x * y", P, "x y | x | y"),
    Row("torch.mul(x, 3)", 2 * ULP),
    Row("x / p", 3e-4, "x | x p"),
    Row("y / p", 1e-4, "p"),
    Row("x @ m", 2e-4, "x m | x | m"),
    Row("torch.matmul(x, m)", 2e-4, "x m | m"),
    Row("x.mm(m)", 2e-4, "x"),
    "powers: products, 2·⌈log₂ n⌉ rounds (SecretTensor.__pow__)",
    Row("x ** 0", EXACT),
    Row("x ** 1", ENC),
    Row("x ** 2", 2 * P),
    Row("x.square()", 2 * P),
    Row("torch.square(x)", 2 * P),
    Row("x ** 3", 2e-3),
    Row("torch.pow(y, 4)", 5e-4),
    Row("y ** 7", 3e-3),
    Row("2 ** y", 1e-3),
    "piecewise linear and comparisons (secret 0.0/1.0 results)",
    Row("torch.relu(x)", ULP),
    Row("F.relu(x)", ULP),
    Row("torch.abs(x)", ULP),
    Row("x.sign()", EXACT),
    Row("torch.clamp(x, -1, 1)", ULP),
    Row("torch.clamp(x, min=y)", ULP, "x y | y"),
    Row("torch.maximum(x, y)", ULP, "x y | x | y"),
    Row("torch.minimum(x, y)", ULP, "x y | y"),
    Row("F.leaky_relu(x, 0.1)", 2 * P),
    Row("F.hardtanh(x)", ULP),
    Row("x > y", EXACT, "x y | x | y"),
    Row("torch.ge(x, 0.5)", EXACT),
    Row("x <= y", EXACT, "x"),
    Row("torch.ne(x, y)", EXACT, "x y"),
    Row("torch.where(c, x, y)", ULP, "x y | x | y"),
    Row("torch.where(x > 0, x, y)", P, "x y | x"),
    "smooth functions (valid ranges and costs: the README's table above)",
    Row("torch.sigmoid(x)", 1e-4),
    Row("F.sigmoid(x)", 1e-4),
    Row("torch.tanh(x)", 2e-4),
    Row("torch.exp(y)", 1e-3),
    Row("torch.log(p)", 1e-3),
    Row("torch.sqrt(p)", 2e-4),
    Row("torch.rsqrt(p)", 1e-4),
    Row("torch.reciprocal(p)", 1e-4),
    Row("F.softmax(x, dim=1)", 1e-4),
    Row("torch.softmax(x, -1)", 1e-4),
    Row("F.log_softmax(x, dim=1)", 3e-4),
    "reductions and statistics",
    Row("torch.sum(x)", 20 * ULP),
    Row("x.sum(1, keepdim=True)", 5 * ULP),
    Row("torch.mean(x, 0)", 2 * ULP),
    Row("x.var()", 2e-3),
    Row("torch.var(x, 1, correction=0)", 1e-3),
    Row("x.std(dim=0)", 1e-3),
    Row("torch.std(x, 1, keepdim=True)", 1e-3),
    Row("torch.norm(y)", 1e-3),
    Row("y.norm(dim=1)", 1e-3),
    Row("torch.linalg.vector_norm(y, 1)", 20 * ULP),
    Row("torch.max(x)", ULP),
    Row("torch.max(x, 1).values", ULP),
    Row("torch.max(x, 1).indices", EXACT),
    Row("torch.min(x, dim=0)[0]", ULP),
    Row("x.amax(0)", ULP),
    Row("torch.argmax(x, 1)", EXACT),
    Row("x.argmin(0)", EXACT),
    Row("torch.max(x, y)", ULP, "x y | y"),
    Row("F.mse_loss(x, y)", 2e-3, "x y | x"),
    "shapes and data movement (local: no communication)",
    Row("torch.cat([x, y])", ULP, "x y | x | y"),
    Row("torch.cat((x, y), dim=1)", ULP, "y"),
    Row("torch.stack([x, y], 1)", ULP, "x"),
    Row("torch.flatten(img, 1)", ULP),
    Row("x.reshape(5, 4)", ULP),
    Row("torch.reshape(x, (-1,))", ULP),
    Row("x.view(2, 10)", ULP),
    Row("torch.transpose(x, 0, 1)", ULP),
    Row("x.t()", ULP),
    Row("x.T", ULP),
    Row("img.mT", ULP),
    Row("img.permute(0, 2, 3, 1)", ULP),
    Row("torch.permute(img, (1, 0, 2, 3))", ULP),
    Row("torch.squeeze(x.unsqueeze(0))", ULP),
    Row("torch.unsqueeze(x, 1)", ULP),
    Row("x[1:3, ::2]", ULP),
    Row("x.clone()", ULP),
    Row("x.detach()", ULP),
    Row("list(x)[2]", ULP),
    "introspection: the public view of a share",
    Row("len(x)", EXACT),
    Row("x.numel()", EXACT),
    Row("torch.numel(img)", EXACT),
    Row("x.dim()", EXACT),
    Row("img.ndim", EXACT),
    Row("x.shape", EXACT),
    Row("x.dtype", EXACT),
    Row("x.device", EXACT),
    "layers",
    Row("F.linear(x, w, b)", 2e-4, "x | w | b | x w b"),
    Row("F.linear(x, w)", 2e-4, "x w"),
    Row("F.conv2d(img, k)", 2e-4, "img | k | img k"),
    Row("F.conv2d(img, k, kb, stride=2, padding=1)", 2e-4, "img"),
    Row("F.max_pool2d(img, 2)", ULP),
    Row("F.max_pool2d(img, 3, stride=2, padding=1)", ULP),
    Row("F.avg_pool2d(img, 2)", P),
    Row("F.avg_pool2d(img, 3, stride=1, padding=1)", P),
    Row("F.dropout(x, 0.5, training=False)", ULP),
    "in-place forms: rebind the handle and return it (test_in_place_rebinds_the_handle)",
    Row("x.clone().add_(y)", ULP, "x | x y"),
    Row("x.clone().relu_()", ULP),
    Row("torch.relu_(x.clone())", ULP),
    Row("F.relu(x.clone(), inplace=True)", ULP),
]


ROWS = [r for r in TABLE if isinstance(r, Row)]  # TABLE's strings are section headings


def _cases(rows):
    return [pytest.param(row, secret, id=f"{row.expr} [secret: {' '.join(secret) or '-'}]")
            for row in rows for secret in row.variants()]


def _leaves(value):
    return [v for item in value for v in _leaves(item)] if isinstance(value, (tuple, list)) else [value]


def check_row(cluster, row: Row, secret: tuple[str, ...]) -> None:
    """Evaluate row.expr on plaintext tensors and with `secret` operands shared (each by a
    different party); compare every tensor of the result within row.tol, the rest exactly."""
    names = row.operands()
    assert set(secret) <= set(names), f"variant {secret} names operands not in {row.expr!r}"
    plain_env = {k: OPERANDS[k][0].clone() for k in names}
    env = {k: cluster.share(v, owner=i % cluster.n_parties) if k in secret else v
           for i, (k, v) in enumerate(plain_env.items())}
    scope = {"torch": torch, "F": F}
    want = eval(row.expr, scope, {k: v.clone() for k, v in plain_env.items()})
    got = eval(row.expr, scope, env)
    want_leaves, got_leaves = _leaves(want), _leaves(got)
    assert len(got_leaves) == len(want_leaves), f"{row.expr}: {len(got_leaves)} results, torch gives {len(want_leaves)}"
    secrets = [g for g in got_leaves if isinstance(g, SecretTensor)]
    revealed = iter(cluster.reveal(*secrets)) if secrets else iter(())
    for w, g in zip(want_leaves, got_leaves):
        if isinstance(w, torch.Tensor):
            assert isinstance(g, SecretTensor), f"{row.expr}: got {type(g).__name__}, not a secret tensor"
            assert_close(next(revealed), w.double(), row.tol, row.expr)
        else:
            assert g == w, f"{row.expr}: {g!r} != torch's {w!r}"


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}p")
def memory(request):
    return mpc.InMemoryCluster(n_parties=request.param)


@pytest.mark.parametrize("row, secret", _cases(ROWS))
def test_table_in_memory(memory, row, secret):
    check_row(memory, row, secret)


GRPC_ROWS = ["F.linear(x, w, b)", "torch.cat([x, y])", "x ** 3", "F.softmax(x, dim=1)", "torch.where(c, x, y)",
             "torch.max(x, 1).indices", "F.avg_pool2d(img, 2)"]


@pytest.fixture(scope="module")
def grpc_cluster():
    with mpc.LocalCluster(n_parties=3, connect_timeout=20) as c:
        yield c


@pytest.mark.slow
@pytest.mark.parametrize("row, secret", _cases([r for r in ROWS if r.expr in GRPC_ROWS]))
def test_table_over_grpc(grpc_cluster, row, secret):
    check_row(grpc_cluster, row, secret)


def test_grpc_rows_are_in_the_table():
    assert sorted(GRPC_ROWS) == sorted(r.expr for r in ROWS if r.expr in GRPC_ROWS)


def test_every_variant_names_operands_of_its_row():
    for row in ROWS:
        for secret in row.variants():
            assert secret and set(secret) <= set(row.operands()) - ALWAYS_PUBLIC, (row.expr, secret)


# -- the table as documentation ----------------------------------------------------------------------------


def _tolerance(tol: float) -> str:
    if tol == EXACT:
        return "0"
    return f"{tol / ULP:g} ulp" if tol < 1e-4 and (tol / ULP * 2).is_integer() else f"{tol:.0e}".replace("e-0", "e-")


def markdown(table=TABLE) -> str:
    """The table as Markdown, with the operands' legend: what README.md prints."""
    legend = "; ".join(f"`{k}` {legend}" for k, (_, legend) in OPERANDS.items())
    lines = [f"Operands: {legend}. Each row runs on plaintext float64 tensors and, once per variant, with "
             "the listed operands secret and the rest public, at 2 and 3 parties; the results must agree "
             "within the stated absolute error (0: bit-exact; 1 ulp = 2⁻¹⁶). `tests/test_torch_api.py` holds "
             "the table and renders it here.", "",
             "| torch expression | secret operands, per variant | max abs error |", "|---|---|---|"]
    for row in table:
        if isinstance(row, str):
            lines.append(f"| ***{row}*** | | |")
            continue
        variants = " · ".join(f"`{', '.join(v)}`" for v in row.variants())
        lines.append(f"| `{row.expr}` | {variants} | {_tolerance(row.tol)} |")
    return "\n".join(lines) + "\n"


def test_readme_prints_the_table():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "### Secret tensors speak torch" in readme
    assert markdown() in readme, "README's torch table is stale: paste markdown() from tests/test_torch_api.py"
