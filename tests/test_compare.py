"""The comparison protocol (protocols/compare.py) run in one process: the leaves each party
derives from its share of the LT tables alone, exhaustively over (c_j, r_j); the whole
protocol at 2, 3 and 5 parties; and the dealer's bytes per element."""

import pytest
import torch

from mpc.prg import PRG, derive_key
from mpc.protocols import bits as bitops
from mpc.protocols import compare as cmp
from mpc.protocols import correlations as corr
from mpc.protocols import streaming
from mpc.protocols.base import Open, PartyContext, Randomness, Spec

SEEDS = [bytes([p + 1]) * 16 for p in range(5)]


def _xor_shares(words: torch.Tensor, n_parties: int) -> list[torch.Tensor]:
    """XOR shares of int16 words, parties 1.. from the PRG, party 0 the rest."""
    shares = [PRG(derive_key(SEEDS[p], "table")).short(words.shape) for p in range(1, n_parties)]
    first = words.clone()
    for s in shares:
        first ^= s
    return [first, *shares]


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_leaves_from_the_lt_tables_alone_for_every_chunk_value_and_mask_chunk(n_parties):
    """Element e = 16 c + r puts chunk value c against mask chunk r in all 16 chunks (the top
    one reads c's low 2 bits: "lt" mode compares bits 0..61); the XOR of the parties' leaves
    must be g = [c < r] and p = [c == r] at each of the 256 pairs (an error in the derived
    p, or in party 0's constant LT[-1] = 1, shows at some pair)."""
    pairs = torch.arange(256)
    c_val, r_val = pairs // 16, pairs % 16
    c = torch.zeros(256, dtype=torch.int64)
    for j in range(16):
        c |= c_val << (4 * j)
    tables = _xor_shares(corr._table_words(r_val.view(256, 1).expand(256, 16), less=True), n_parties)
    leaves = torch.zeros((8, 256 * 4 // 8), dtype=torch.uint8)
    for pid, table in enumerate(tables):
        leaves ^= cmp._leaves("lt", c, table, pid == 0)
    bits = bitops.unpack_rows(leaves, 256 * 4).view(2, 4, 256, 4)  # (g/p, k, element, group)
    got_g = bits[0].permute(1, 2, 0).reshape(256, 16)  # chunk 4 * group + k
    got_p = bits[1].permute(1, 2, 0).reshape(256, 16)
    c_chunks = c_val.view(256, 1).expand(256, 16).clone()
    c_chunks[:, 15] &= 3
    r_chunks = r_val.view(256, 1).expand(256, 16)
    assert torch.equal(got_g, (c_chunks < r_chunks).to(torch.uint8))
    assert torch.equal(got_p, (c_chunks == r_chunks).to(torch.uint8))


def test_eq_leaves_are_the_eq_tables():
    c = torch.arange(256, dtype=torch.int64) // 16 * 0x1111111111111111
    r_val = torch.arange(256) % 16
    tables = _xor_shares(corr._table_words(r_val.view(256, 1).expand(256, 16), less=False), 3)
    leaves = torch.zeros((4, 128), dtype=torch.uint8)
    for pid, table in enumerate(tables):
        leaves ^= cmp._leaves("eq", c, table, pid == 0)
    got = bitops.unpack_rows(leaves, 1024).view(4, 256, 4).permute(1, 2, 0).reshape(256, 16)
    assert torch.equal(got, (torch.arange(256) // 16 == r_val).to(torch.uint8).view(256, 1).expand(256, 16))


def _run(n_parties: int, z: torch.Tensor, mode: str, payloads=(), self_payload=False, opened_bytes=None):
    """Every party's compare(), in lockstep: the dealer's material from the party's seed (and
    party 0's correction), Opens summed (or XORed) across parties. Returns the sums of the
    parties' b and products. With `self_payload`, each party's own share of z (the very
    tensor) comes first among its payloads; `opened_bytes` (a list) gets party 0's bytes
    opened per round."""
    ring_shares = [PRG(derive_key(SEEDS[p], "z")).ring(z.shape) for p in range(1, n_parties)]
    zs = [z - sum(ring_shares), *ring_shares]
    gens = [cmp.compare(PartyContext(pid, n_parties), zs[pid], mode,
                        (zs[pid],) * self_payload + tuple(w if pid == 0 else torch.zeros_like(w) for w in payloads))
            for pid in range(n_parties)]
    replies, results = [None] * n_parties, [None] * n_parties
    while True:
        requests = []
        for pid, gen in enumerate(gens):
            try:
                requests.append(gen.send(replies[pid]))
            except StopIteration as stop:
                results[pid] = stop.value
        if not requests:
            break
        if isinstance(requests[0], Randomness):
            spec = requests[0].spec
            prgs = lambda: [PRG(derive_key(s, "corr", "test", 0)) for s in SEEDS[:n_parties]]  # noqa: E731
            correction = b"".join(corr.dealer_correction(spec, prgs()))
            assert len(correction) == corr.correction_nbytes(spec)
            replies = [corr.party_part(spec, pid, prg, memoryview(correction) if pid == 0 else None)
                       for pid, prg in enumerate(prgs())]
            continue
        assert all(isinstance(r, Open) for r in requests)
        if opened_bytes is not None:
            opened_bytes.append(sum(v.numel() * v.element_size() for v in requests[0].values))
        opened = []
        for k, first in enumerate(requests[0].values):
            acc = first.clone()
            for r in requests[1:]:
                acc = acc ^ r.values[k] if r.xor else acc + r.values[k]
            opened.append(acc)
        replies = [tuple(opened)] * n_parties
    b = sum(r[0] for r in results)
    products = tuple(sum(r[1][k] for r in results) for k in range(self_payload + len(payloads)))
    return b, products


def _values(n: int) -> torch.Tensor:
    """Edge values of the valid range and its middle, zero and its neighbours, random ones."""
    edges = [0, 1, -1, 2, -2, 15, 16, -16, 17, 255, 256, -256, 1 << 40, -(1 << 40),
             (1 << 62) - 1, -(1 << 62) + 1, (1 << 61), -(1 << 61)]
    g = torch.Generator().manual_seed(7)
    small = torch.randint(-300, 300, (n // 2,), generator=g)
    large = torch.randint(-(1 << 62) + 1, 1 << 62, (n - n // 2 - len(edges),), generator=g)
    return torch.cat([torch.tensor(edges), small, large])


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_sign_and_zero_tests_and_payload_products(n_parties):
    z = _values(2000)
    w = torch.randint(-(1 << 40), 1 << 40, (2000, 3), generator=torch.Generator().manual_seed(8))
    b, (bw,) = _run(n_parties, z, "ge", (w,))
    assert torch.equal(b, (z >= 0).long())
    assert torch.equal(bw, w * (z >= 0).long().view(-1, 1))
    z[::3] = 0  # some zeros, for the zero test
    b, () = _run(n_parties, z, "eq")
    assert torch.equal(b, (z == 0).long())


def test_the_dealer_sends_53_bytes_per_element_for_a_sign_test():
    """The LT tables alone (32 bytes), bit 62 of r, the tree's mask products (11 + 1.875), the
    bit s (8), and 8 bytes per payload element: 85 when the EQ tables went along."""
    for n in (8, 1000, 4096):
        assert corr.correction_nbytes(corr.compare_material((n,), "lt")) == 53 * n
        assert corr.correction_nbytes(corr.compare_material((n,), "lt", [(n,), (n, 3)])) == 53 * n + 8 * 4 * n
        assert corr.correction_nbytes(corr.compare_material((n,), "eq")) == 375 * n // 8  # 46.875: unchanged
    n = 2 * streaming.CHUNK // 8 + 24  # chunked, past a chunk
    spec = corr.compare_material((n,), "lt", [(n,)])
    ks = [derive_key(s, "corr", "job", 0) for s in SEEDS[:3]]
    assert sum(len(p) for p in streaming.correction_pieces(spec, ks, 1 << 13)) == 61 * n


@pytest.mark.parametrize("n_parties", [2, 3, 5])
@pytest.mark.parametrize("mode", ["ge", "eq"])
def test_a_payload_that_is_z_itself_is_not_opened_again(n_parties, mode):
    """b z for the compared value z (ReLU's payload) rides on the opening c: the same b and
    products as with z passed as a separate payload, 8 bytes per element fewer in round 1,
    and a second payload beside it still works."""
    z = _values(2000)
    if mode == "eq":
        z[::3] = 0
    w = torch.randint(-(1 << 40), 1 << 40, (2000, 3), generator=torch.Generator().manual_seed(8))
    ref = (z >= 0).long() if mode == "ge" else (z == 0).long()
    own_bytes, apart_bytes = [], []
    b, (bz, bw) = _run(n_parties, z, mode, (w,), self_payload=True, opened_bytes=own_bytes)
    assert torch.equal(b, ref)
    assert torch.equal(bz, z * ref)
    assert torch.equal(bw, w * ref.view(-1, 1))
    b2, (bz2, bw2) = _run(n_parties, z, mode, (z.clone(), w), opened_bytes=apart_bytes)
    assert torch.equal(b2, ref) and torch.equal(bz2, bz) and torch.equal(bw2, bw)
    assert apart_bytes[0] - own_bytes[0] == 8 * 2000
    assert own_bytes[1:] == apart_bytes[1:]


def test_a_self_payload_needs_the_compared_shape_and_saves_the_parties_its_mask():
    with pytest.raises(ValueError, match="self payload has the compared shape"):
        corr.compare_material((4,), "lt", [(4, 2)], self_payload=True)
    # as the dealer rebuilds a request: refused (a ValueError the dealer reports), not broadcast
    for shapes in (((4,), (4, 2)), ((3,), (3, 3)), ((2, 2), (2, 2, 2)), ((4,),)):
        forged = Spec("cmp", shapes, (("eq", 0), ("self", 1)))
        with pytest.raises(ValueError, match="self payload has the compared shape"):
            corr.free_parts(forged, 1)
        with pytest.raises(ValueError, match="self payload has the compared shape"):
            corr.dealer_correction(forged, [PRG(derive_key(s, "corr", "t", 0)) for s in SEEDS[:3]])
    own = corr.compare_material((64,), "lt", [(64,)], self_payload=True)
    apart = corr.compare_material((64,), "lt", [(64,)])
    assert corr.correction_nbytes(own) == corr.correction_nbytes(apart) == 61 * 64
    drawn = lambda spec: sum(p.nbytes() for p in corr.free_parts(spec, 1))  # noqa: E731
    assert drawn(apart) - drawn(own) == 8 * 64
