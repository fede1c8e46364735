"""The resumable JSON-lines file behind every generation that must survive a killed run (teacher text, evaluation
answers): each finished batch is appended and flushed, and a reader gets back every complete record.

A run killed mid-write leaves at most one partial last line (no final newline); reading cuts it off first, so later
appends start on a line of their own, and a line that is not a JSON object is skipped with a warning (its row is
generated again). What a record holds, and whether it still belongs to the run, is the caller's business.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["JsonLinesLog"]

logger = logging.getLogger(__name__)


class JsonLinesLog:
    """An append-only JSON-lines file: `records()` reads it back (repaired), `append(records)` adds and flushes.

    Use as a context manager (or call `close()`), so the file handle is released also when generation fails."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def is_empty(self) -> bool:
        return not self.path.exists() or self.path.stat().st_size == 0

    def repair(self) -> None:
        """Cut a record left half-written by a killed run (no final newline)."""
        if self.is_empty():
            return
        with self.path.open("rb+") as handle:
            data = handle.read()
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning("%s ends with a partial record (%d bytes): removed; that row is generated again.",
                               self.path, len(data) - keep)  # fmt: skip
                handle.truncate(keep)

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """`(line number, record)` of every complete record, after `repair()`."""
        self.repair()
        if self.is_empty():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict):
                    logger.warning(
                        "%s:%d is not a complete record; its row is generated again.", self.path, line_number
                    )
                    continue
                yield line_number, record

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write `records`, one JSON object a line, and flush (a finished batch survives a kill after this)."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        for record in records:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> JsonLinesLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
