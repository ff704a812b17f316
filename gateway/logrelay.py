"""Worker output in the supervisor's log: the relay of a worker's pipes, and how a worker ended.

When the supervisor does not log to stdout, each worker writes its log
events as JSON lines on a pipe and :class:`LogRelay` publishes them into the
supervisor's own log; anything else a worker prints becomes a labelled
warning. Every held line is bounded (:data:`MAX_RELAY_LINE`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, eventFromJSON
from twisted.python.failure import Failure

__all__ = ["MAX_RELAY_LINE", "LogRelay", "describe_exit"]

#: A relayed worker line longer than this is passed on in pieces.
MAX_RELAY_LINE = 64 * 1024


def describe_exit(reason: Failure) -> str:
    """``exited with status 3`` / ``was killed by signal 9`` / ``exited normally``."""
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return "exited normally"


class LogRelay:
    """Publishes what a worker writes on a pipe into the supervisor's own log.

    Lines starting with the JSON record separator are twisted.logger events
    (the worker's :func:`gateway.adoption.worker_log_observer` in JSON mode)
    and are published as they are, with their own time, level and system;
    anything else (stderr, a stray print) becomes a warning labelled
    ``worker=N``.  A line is held until its newline, at most
    :data:`MAX_RELAY_LINE` bytes.
    """

    def __init__(self, number: int, publish: Callable[[dict[str, Any]], None]) -> None:
        self.number = number
        self._publish = publish
        self._buffers: dict[int, bytes] = {}

    def feed(self, fd: int, data: bytes) -> None:
        """Bytes the worker wrote on its descriptor ``fd``."""
        buffer = self._buffers.get(fd, b"") + data
        *lines, rest = buffer.split(b"\n")
        while len(rest) > MAX_RELAY_LINE:
            lines.append(rest[:MAX_RELAY_LINE])
            rest = rest[MAX_RELAY_LINE:]
        self._buffers[fd] = rest
        for line in lines:
            self._line(fd, line)

    def flush(self) -> None:
        """Pass on what is left without a newline (the worker has gone)."""
        for fd, rest in self._buffers.items():
            if rest:
                self._line(fd, rest)
        self._buffers.clear()

    def _line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        if text.startswith("\x1e"):
            try:
                self._publish(eventFromJSON(text[1:]))
                return
            except Exception:
                pass  # not an event after all: pass the text on
        if not text.strip():
            return
        stream = "stderr" if fd == 2 else "stdout"
        self._publish({
            "log_format": "{line}",
            "line": text,
            "log_level": LogLevel.warn,
            "log_namespace": "gateway.worker",
            "log_system": f"worker={self.number} {stream}",
            "log_time": time.time(),
        })
