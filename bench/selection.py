"""Micro-benchmark of server selection: microseconds per pick + release.

Run from the checkout: ``python bench/selection.py [--repeat N]``. For each
algorithm of :mod:`gateway.balancer` and pool sizes 10, 100 and 1000 (mixed
weights 1-10, all servers up), it times ``pick()`` followed by ``release()``
with :mod:`timeit`, best of ``--repeat`` runs, and prints the ratio of the
1000-server cost to the 10-server cost: near 1 means the cost does not grow
with the pool. nginx's O(n) scan (the reference the round-robin reproduces)
is timed alongside for contrast. The checkout's ``gateway`` package is
measured, not an installed copy.
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.balancer import LeastConn, Random2, RoundRobin, ServerState  # noqa: E402
from gateway.hashing import Hash  # noqa: E402
from gateway.config import ServerConfig  # noqa: E402

SIZES = (10, 100, 1000)
KEYS = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}".encode() for i in range(4096)]


class NginxScan:
    """nginx's smooth weighted round-robin as it is written: every pick scans every server."""

    def __init__(self, servers: Sequence[ServerState]) -> None:
        self.servers = tuple(servers)
        self.weights = [s.config.weight for s in self.servers]
        self.scores = [0] * len(self.servers)

    def pick(self) -> ServerState:
        scores, weights = self.scores, self.weights
        best, total = 0, 0
        for i, weight in enumerate(weights):
            scores[i] += weight
            total += weight
            if scores[i] > scores[best]:
                best = i
        scores[best] -= total
        return self.servers[best]


def pool(size: int) -> list[ServerState]:
    rng = random.Random(size)
    return [
        ServerState(ServerConfig(f"s{i}", "bench", "http", f"10.0.{i // 250}.{i % 250}", 80, weight=rng.randint(1, 10)))
        for i in range(size)
    ]


def pick_release(selector, keyed: bool) -> Callable[[], None]:
    """One pick and its release, with a rotating hash key when ``keyed``."""
    if keyed:
        keys = iter(KEYS * 1000)

        def step() -> None:
            selector.pick(key=next(keys)).release()

    else:

        def step() -> None:
            selector.pick().release()

    return step


def nginx_step(scan: NginxScan) -> Callable[[], None]:
    def step() -> None:
        scan.pick()

    return step


ALGORITHMS: dict[str, Callable[[list[ServerState]], Callable[[], None]]] = {
    "roundrobin": lambda servers: pick_release(RoundRobin(servers), keyed=False),
    "leastconn": lambda servers: pick_release(LeastConn(servers), keyed=False),
    "hash": lambda servers: pick_release(Hash(servers), keyed=True),
    "random2": lambda servers: pick_release(Random2(servers, random.Random(1)), keyed=False),
    "nginx O(n) scan (reference, pick only)": lambda servers: nginx_step(NginxScan(servers)),
}


def measure(step: Callable[[], None], repeat: int, number: int) -> float:
    """Best microseconds per call over ``repeat`` runs of ``number`` calls."""
    for _ in range(number // 10):
        step()  # warm the structures (heaps settle after a first cycle)
    return min(timeit.repeat(step, repeat=repeat, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per cell (best is kept)")
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    options = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; best of {options.repeat} x {options.number} calls; µs per pick+release")
    header = f"{'algorithm':<40}" + "".join(f"{f'n={size}':>10}" for size in SIZES) + f"{'1000/10':>10}"
    print(header)
    print("-" * len(header))
    for name, build in ALGORITHMS.items():
        costs = [measure(build(pool(size)), options.repeat, options.number) for size in SIZES]
        cells = "".join(f"{cost:>10.2f}" for cost in costs)
        print(f"{name:<40}{cells}{costs[-1] / costs[0]:>10.2f}")


if __name__ == "__main__":
    main()
