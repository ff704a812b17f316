"""Access log lines: NCSA combined format plus upstream address and timings.

One line per request through twisted.logger (namespace ``gateway.access``), so
operators route it with the usual observers. The timestamp text is cached per
second because formatting a date per request would cost more than the rest of
the line.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

log = Logger(namespace="gateway.access")

_stamp_second = -1
_stamp_text = ""


def _timestamp(now: float) -> str:
    """``[22/Nov/2026:18:01:57 +0000]`` for ``now``, cached per whole second."""
    global _stamp_second, _stamp_text
    second = int(now)
    if second != _stamp_second:
        _stamp_second = second
        _stamp_text = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return _stamp_text


def _quote(value: bytes | None) -> str:
    """A header value for a quoted log field: escaped, never breaking the line."""
    if not value:
        return "-"
    text = value.decode("latin-1")
    if '"' in text or "\\" in text or not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text


def combined_line(
    *,
    peer: str,
    request_line: bytes,
    status: int,
    body_bytes: int,
    referer: bytes | None,
    user_agent: bytes | None,
    upstream: str,
    upstream_time: float,
    total_time: float,
    now: float,
) -> str:
    """One access line: combined format, then ``upstream=`` ``upstream_time=`` ``time=``."""
    upstream_text = f"{upstream_time:.3f}" if upstream_time >= 0 else "-"
    return (
        f'{peer} - - [{_timestamp(now)}] "{_quote(request_line)}" {status} {body_bytes} '
        f'"{_quote(referer)}" "{_quote(user_agent)}" '
        f"upstream={upstream} upstream_time={upstream_text} time={total_time:.3f}"
    )


def emit(line: str) -> None:
    """Send one access line to the log observers."""
    log.info("{line}", line=line)
