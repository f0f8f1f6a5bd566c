"""An append-only log of records in numbered segment files, replayed on open.

Layout: `<directory>/<number:012d>.seg`, numbers increasing. Each record is
`<u32 little-endian payload length><u32 crc32(payload)><payload>`; payloads are opaque bytes
(the broker writes msgpack). A segment is closed (fsynced) and a new one started once it reaches
`segment_bytes`.

Durability is chosen by `fsync_every`: 1 fsyncs after every record (a record whose `append`
returned survives power loss), N fsyncs every N records, 0 never fsyncs (records still reach the
OS at once, so they survive the process being killed, not the machine losing power). Rolling to a
new segment always fsyncs the old one and the directory.

Replay tolerates a torn last record of the last segment (a crash mid-write): it is truncated away
and logged. Anything else that does not parse (a bad checksum or short record before the end, a
torn record in an older segment) raises `CorruptLog` naming the segment and byte offset: that is
damage, not a crash, and silently dropping it could drop acknowledged data.

Compaction is the owner's decision: `delete(number)` removes a whole closed segment once the owner
knows every record in it is no longer needed.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger("engine.segment_log")

_HEADER = struct.Struct("<II")
SUFFIX = ".seg"


class CorruptLog(Exception):
    """A record in the middle of the log does not parse; names the segment and offset."""

    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"corrupt segment log: {path} at byte {offset}: {why}")
        self.path = path
        self.offset = offset


class SegmentLog:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        fsync_every: int = 1,
    ) -> None:
        if segment_bytes <= _HEADER.size:
            raise ValueError(f"segment_bytes must exceed {_HEADER.size}, got {segment_bytes}")
        if fsync_every < 0:
            raise ValueError(f"fsync_every must be >= 0, got {fsync_every}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_every = fsync_every
        self._segments: list[int] = sorted(
            int(p.name.removesuffix(SUFFIX))
            for p in self.directory.iterdir()
            if p.name.endswith(SUFFIX) and p.name.removesuffix(SUFFIX).isdigit()
        )
        self._file: IO[bytes] | None = None
        self._size = 0
        self._unsynced = 0
        self._replayed = not self._segments
        self.truncated_bytes = 0  # how much a torn tail cost at the last replay

    # --- reading -------------------------------------------------------------------------------

    def path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SUFFIX}"

    def segments(self) -> list[int]:
        """The segment numbers on disk, oldest first (the last one is the one appended to)."""
        return list(self._segments)

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """Yield `(segment number, payload)` for every record, oldest first.

        Must run to the end once before the first `append` on a non-empty directory; a torn tail
        of the last segment is truncated when the generator reaches it.
        """
        for i, number in enumerate(self._segments):
            last = i == len(self._segments) - 1
            yield from ((number, p) for p in self._read_segment(number, last))
        self._replayed = True

    def _read_segment(self, number: int, last: bool) -> Iterator[bytes]:
        path = self.path(number)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset < size:
                header = f.read(_HEADER.size)
                torn = None
                if len(header) < _HEADER.size:
                    torn = f"short header ({len(header)} of {_HEADER.size} bytes)"
                else:
                    length, crc = _HEADER.unpack(header)
                    end = offset + _HEADER.size + length
                    if end > size:
                        torn = f"record of {length} bytes runs past the end ({size})"
                    else:
                        payload = f.read(length)
                        if zlib.crc32(payload) != crc:
                            if end != size:
                                raise CorruptLog(path, offset, "checksum mismatch")
                            torn = "checksum mismatch in the last record"
                if torn is not None:
                    if not last:
                        raise CorruptLog(path, offset, f"torn record in a closed segment: {torn}")
                    self._truncate(path, offset, size, torn)
                    return
                yield payload
                offset = end

    def _truncate(self, path: Path, offset: int, size: int, why: str) -> None:
        log.warning(
            "segment_log.torn_tail", path=str(path), offset=offset, dropped=size - offset, why=why
        )
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        self.truncated_bytes = size - offset

    # --- writing -------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """The segment the next record goes to (opening it if needed)."""
        self._ensure_open()
        return self._segments[-1]

    def append(self, payload: bytes) -> int:
        """Write one record; returns its segment number. Durable per `fsync_every` on return."""
        self._ensure_open()
        assert self._file is not None
        if self._size > 0 and self._size + _HEADER.size + len(payload) > self.segment_bytes:
            self._roll()
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        self._file.write(record)  # unbuffered: one write reaches the OS whole or torn
        self._size += len(record)
        self._unsynced += 1
        if self.fsync_every and self._unsynced >= self.fsync_every:
            self.sync()
        return self._segments[-1]

    def sync(self) -> None:
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def delete(self, number: int) -> None:
        """Remove a closed segment (compaction). The active segment cannot be deleted."""
        if self._segments and number == self._segments[-1]:
            raise ValueError(f"segment {number} is the active segment")
        self._segments.remove(number)
        self.path(number).unlink(missing_ok=True)
        self._sync_dir()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def _ensure_open(self) -> None:
        if self._file is not None:
            return
        if not self._replayed:
            raise RuntimeError("replay() the segment log to the end before appending")
        if not self._segments:
            self._segments.append(1)
            self._sync_dir_after_create(self._segments[-1])
        path = self.path(self._segments[-1])
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._size = os.fstat(self._file.fileno()).st_size

    def _roll(self) -> None:
        assert self._file is not None
        self._unsynced = max(self._unsynced, 1)
        self.sync()
        self._file.close()
        number = self._segments[-1] + 1
        self._segments.append(number)
        self._file = open(self.path(number), "ab", buffering=0)  # noqa: SIM115
        self._size = 0
        self._sync_dir()

    def _sync_dir_after_create(self, number: int) -> None:
        self.path(number).touch()
        self._sync_dir()

    def _sync_dir(self) -> None:
        if os.name != "posix":
            return
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
