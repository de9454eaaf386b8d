"""The CrypTen reference: tests run it without its untimed warm-up run (they read no time),
which is only sound if CrypTen's counters are each run's own. Checked on the first job of a
fresh set of CrypTen processes, where any one-time set-up would show."""

import torch

from mpc import reference


def test_crypten_counts_the_same_rounds_and_bytes_without_its_warm_up():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(200, generator=g, dtype=torch.float64) for _ in range(2))
    jobs = [("relu", [x]), ("mul", [x, y]), ("exp", [x])]
    counts = {warmup: [(r["rounds"], r["bytes"]) for r in reference.run_many(jobs, world_size=3, reps=1, warmup=warmup)]
              for warmup in (True, False)}
    assert counts[False] == counts[True]
    assert [rounds for rounds, _ in counts[False]] == [17, 4, 27]  # CrypTen 0.4.1's, as the README quotes
