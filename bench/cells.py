"""What a benchmark measures: the cells of the matrix and how long each run lasts."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from wrk import WrkResult


@dataclass(frozen=True, slots=True)
class Cell:
    """One load shape: a body size, a number of connections, keep-alive or not."""

    path: str
    connections: int
    close: bool = False

    @property
    def label(self) -> str:
        """``1 KiB, 50 conn`` or ``1 KiB, 50 conn, new conn/request``."""
        size = self.path.lstrip("/").replace("k", " KiB")
        shape = ", new conn/request" if self.close else ""
        return f"{size}, {self.connections} conn{shape}"


FULL_CELLS = (
    Cell("/1k", 1),
    Cell("/1k", 50),
    Cell("/1k", 500),
    Cell("/100k", 1),
    Cell("/100k", 50),
    Cell("/100k", 500),
    Cell("/1k", 50, close=True),
)
QUICK_CELLS = (
    Cell("/1k", 50),
    Cell("/1k", 500),
    Cell("/100k", 1),  # where a missing TCP_NODELAY shows (40 ms delayed-ACK stalls)
    Cell("/100k", 50),
    Cell("/1k", 50, close=True),
)
#: The cell where the access log is measured on against off.
ACCESS_LOG_CELL = Cell("/1k", 50)
#: The cell where gateway ``workers = 2`` meets nginx ``worker_processes 2``
#: (run when the gateway has workers: gateway/workers.py).
WORKERS_CELL = Cell("/1k", 50)


@dataclass(frozen=True, slots=True)
class Plan:
    """The cells to run, how long each wrk run lasts and how often the pair alternates."""

    cells: tuple[Cell, ...]
    duration_s: int  # wrk takes whole seconds only
    repeats: int
    warmup_s: int

    def estimate_s(self, workers_row: bool = True) -> float:
        """Seconds of load the plan generates (startup and pauses not counted)."""
        per_cell = self.duration_s * (2 * self.repeats + 2) + 4 * self.warmup_s
        extra = 1 + int(workers_row)  # the access-log pair, the workers pair
        return len(self.cells) * per_cell + extra * 2 * self.repeats * self.duration_s


FULL = Plan(FULL_CELLS, duration_s=5, repeats=3, warmup_s=1)
QUICK = Plan(QUICK_CELLS, duration_s=2, repeats=1, warmup_s=1)


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run against one target, the target's RSS right after it, and the
    kernel's listen-queue overflows during it."""

    result: WrkResult
    rss_kib: int
    listen_overflows: int = 0


@dataclass(slots=True)
class Series:
    """Every run of one target in one cell; the report shows medians."""

    samples: list[Sample] = field(default_factory=list)

    def median_rate(self) -> float:
        """Median requests per second."""
        return statistics.median(s.result.requests_per_s for s in self.samples)

    def median_p50(self) -> float:
        """Median of the runs' p50 latency, in ms."""
        return statistics.median(s.result.p50_ms for s in self.samples)

    def median_p99(self) -> float:
        """Median of the runs' p99 latency, in ms."""
        return statistics.median(s.result.p99_ms for s in self.samples)

    def max_rss_kib(self) -> int:
        """The largest RSS seen after any run."""
        return max(s.rss_kib for s in self.samples)

    def errors(self, body_size: int) -> list[str]:
        """One text per run that saw non-2xx answers, socket errors, short answers
        or accept-queue overflows."""
        found = []
        for sample in self.samples:
            result = sample.result
            # wrk rounds its byte count to 2 decimals of its unit: allow 1 %.
            if result.requests and result.bytes_per_response < 0.99 * body_size:
                found.append(f"short answers: {result.bytes_per_response:.0f} B/response")
            if result.error_text():
                found.append(result.error_text())
            if sample.listen_overflows:
                found.append(
                    f"{sample.listen_overflows} connections overflowed a listen queue "
                    "(kernel ListenOverflows, system-wide)"
                )
        return found
