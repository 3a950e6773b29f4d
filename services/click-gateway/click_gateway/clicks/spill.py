"""Click rows that PostgreSQL could not take yet, kept in a local append-only file.

While the database is away the redirect goes on (see ``buffer.py``); the rows it
could not write are appended here, so a crash (even ``kill -9``) or a stop
during the outage loses nothing that reached the file, and memory stays
bounded however long the outage lasts. Each gateway process writes its own
file and holds an exclusive ``flock`` on it for as long as it runs: a file
nobody holds belongs to a process that is gone, and the next process to start
adopts it and writes its rows once the database takes writes again.

Format: one JSON array per line, the row in ``repository.CLICK_COLUMNS`` order
with the two pre-encoded binary values as hex. A process killed mid-write can
leave a torn last line: reading skips that one line (it was never fully
written, so it was never counted as kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

SUFFIX = ".spill"
# Positions of the values that travel as pre-encoded bytes (created_at, ip).
_BINARY_POSITIONS = (1, 6)
READ_CHUNK_ROWS = 5000

ClickRow = tuple[Any, ...]


def encode_row(row: ClickRow) -> bytes:
    values = list(row)
    for position in _BINARY_POSITIONS:
        value = values[position]
        if value is not None:
            values[position] = value.hex()
    return orjson.dumps(values) + b"\n"


def decode_row(line: bytes) -> ClickRow:
    values = orjson.loads(line)
    if not isinstance(values, list):
        raise ValueError("not a click row")
    for position in _BINARY_POSITIONS:
        value = values[position]
        if value is not None:
            values[position] = bytes.fromhex(value)
    return tuple(values)


class SpillFile:
    """One append-only file of rows, locked by its owner while it is in use."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.rows = 0

    @classmethod
    def create(cls, directory: Path) -> SpillFile:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"clicks-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        path = directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, fd)

    @classmethod
    def adopt_orphans(cls, directory: Path) -> list[SpillFile]:
        """Files left by processes that are gone (nobody holds their lock), now ours."""
        if not directory.is_dir():
            return []
        adopted: list[SpillFile] = []
        for path in sorted(directory.glob("*" + SUFFIX)):
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:  # another process adopted and finished it
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner is alive
                os.close(fd)
                continue
            if not path.exists():  # adopted and removed between our open and our lock
                os.close(fd)
                continue
            orphan = cls(path, fd)
            orphan.rows = sum(1 for line in orphan._lines() if line.endswith(b"\n"))
            adopted.append(orphan)
        return adopted

    def append(self, rows: Iterable[ClickRow]) -> int:
        """Write rows durably (fsync); returns how many."""
        data = b"".join(encode_row(row) for row in rows)
        if not data:
            return 0
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        count = data.count(b"\n")
        self.rows += count
        return count

    def read_chunks(self, size: int = READ_CHUNK_ROWS) -> Iterator[list[ClickRow]]:
        chunk: list[ClickRow] = []
        for row in self._rows():
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def clear(self) -> None:
        """Everything in it is stored: start the file over."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.rows = 0

    def remove(self) -> None:
        """Delete the (fully written) file and let go of it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def _lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as reader:
            yield from reader

    def _rows(self) -> Iterator[ClickRow]:
        for number, line in enumerate(self._lines(), start=1):
            if not line.endswith(b"\n"):
                log.warning("%s: torn last line skipped (a write cut short)", self.path)
                return
            try:
                yield decode_row(line)
            except (ValueError, IndexError) as exc:
                log.error("%s: line %d is not a click row, skipped (%s)", self.path, number, exc)
