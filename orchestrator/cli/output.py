"""How the command line writes: aligned text for people (coloured only in a terminal), one
JSON document per answer for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from orchestrator.store.record import SessionStatus

_CODES = {
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "dim": "2",
    "bold": "1",
}

STATUS_COLOURS = {
    SessionStatus.COMPLETED: "green",
    SessionStatus.ASSIGNED: "cyan",
    SessionStatus.DISPATCHED: "cyan",
    SessionStatus.CLAIMED: "blue",
    SessionStatus.WAITING: "yellow",
    SessionStatus.ENDING: "magenta",
    SessionStatus.FAILED: "red",
    SessionStatus.LOST: "red",
    # doctor's checks
    "ok": "green",
    "warn": "yellow",
    "fail": "red",
    "skip": "dim",
}


class Output:
    """Where a command writes. `colour` is decided once: on for a terminal, off for a pipe or
    a file, and off whenever NO_COLOR is set."""

    def __init__(
        self, stream: TextIO | None = None, *, colour: bool | None = None, json_mode: bool = False
    ) -> None:
        self.stream = stream or sys.stdout
        if colour is None:
            colour = bool(getattr(self.stream, "isatty", lambda: False)())
        self.colour = colour and not json_mode
        self.json_mode = json_mode

    def paint(self, text: str, colour: str) -> str:
        if not self.colour or colour not in _CODES:
            return text
        return f"\x1b[{_CODES[colour]}m{text}\x1b[0m"

    def status(self, status: str) -> str:
        return self.paint(status, STATUS_COLOURS.get(status, "bold"))

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def json(self, value: Any) -> None:
        """One JSON document on one line (`jq` reads a stream of them)."""
        self.line(json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":")))

    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        """`name: value` lines with the names aligned."""
        rows = [(k, v) for k, v in pairs if v not in ("", None)]
        width = max((len(k) for k, _ in rows), default=0)
        for name, value in rows:
            self.line(f"{self.paint(name.ljust(width), 'dim')}  {value}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Columns padded to their widest cell; colour codes do not count towards width."""
        widths = [len(h) for h in headers]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], visible_len(cell))
        heads = [self.paint(h.ljust(w), "bold") for h, w in zip(headers, widths, strict=True)]
        self.line("  ".join(heads).rstrip())
        for row in rows:
            cells = [c + " " * (w - visible_len(c)) for c, w in zip(row, widths, strict=True)]
            self.line("  ".join(cells).rstrip())

    def error(self, message: str) -> None:
        """Errors go to stderr, so a script's stdout stays parseable."""
        prefix = "error:"
        if sys.stderr.isatty() and self.colour:
            prefix = f"\x1b[31m{prefix}\x1b[0m"
        sys.stderr.write(f"{prefix} {message}\n")
        sys.stderr.flush()


def visible_len(text: str) -> int:
    length, i = 0, 0
    while i < len(text):
        if text[i] == "\x1b":
            i = text.index("m", i) + 1
            continue
        length += 1
        i += 1
    return length


def clock(ms: int | None) -> str:
    """A unix-ms time as local `YYYY-MM-DD HH:MM:SS`."""
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """`850ms`, `12.3s`, `4m05s`, `2h03m`."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def age_of(ms: int | None) -> str:
    return duration(time.time() - ms / 1000) if ms else ""
