"""A durable, append-only local spool of :class:`~telephony.recording.events.RecordEvent`.

The Redis writer (:mod:`telephony.recording.store`) puts events here while Redis is down or slow
and replays them, oldest first, when Redis answers again. Layout of ``path_dir`` (docs/records.md):

- ``<n>.log`` -- a segment: one event per line, the JSON object of ``RecordEvent.fields()``
  (UTF-8, no spaces, ``\\n``-terminated). Segments are read in increasing ``n``; new events are
  appended to the highest one until it reaches the segment size, then a new one starts.
- ``<n>.ack`` -- how many bytes at the start of segment ``n`` are already in Redis (a decimal
  number, replaced atomically by rename). A segment that is fully replayed is deleted with its
  ``.ack``; an empty spool is an empty directory.

On open the spool recovers what a killed process left: a last line without its ``\\n`` (a torn
write) is cut off, every complete line after the ack offsets is pending again. Lines that do not
decode are skipped (counted in :attr:`Spool.corrupt`), never fatal.

fsync policies: ``always`` fsyncs each append (durable against power loss, costs a disk flush
per event), ``batch`` fsyncs at most every :data:`BATCH_INTERVAL` seconds (the recorder does it
off the event loop through :meth:`Spool.dup_for_sync`; an append does it itself when that is
overdue) and on :meth:`Spool.flush`,
``never`` leaves it to the OS (still safe against a killed process: each append is one
``write(2)`` into the page cache).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Final

from telephony.recording.events import KINDS, RecordEvent, utf8

FSYNC_POLICIES: Final = ("always", "batch", "never")
#: ``batch`` policy: the longest time an appended event may stay without fsync
BATCH_INTERVAL: Final = 0.2
_FIELDS: Final = frozenset(f.name for f in dc_fields(RecordEvent))
_INTS: Final = frozenset(
    {"at_ms", "triage_level", "sip_status", "transfer_requested_ms", "call_offered_ms"}
)
_FIRST_SEGMENT: Final = 1_000_000_000  # room below for segments put in front (push_front)


def encode(ev: RecordEvent) -> bytes:
    """One spool line for ``ev``."""
    return utf8(json.dumps(ev.fields(), separators=(",", ":"), ensure_ascii=False)) + b"\n"


def decode(line: bytes) -> RecordEvent | None:
    """The event on one spool line, or None when the line is not a valid event."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        return None
    data: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _FIELDS:
            continue  # a field of a newer version: ignored rather than fatal
        if key in _INTS:
            if not isinstance(value, int) or isinstance(value, bool):
                return None
        elif not isinstance(value, str):
            return None
        data[key] = value
    try:
        return RecordEvent(**data)
    except TypeError:  # a required field missing
        return None


class Spool:
    """The spool in directory ``path_dir`` (created if missing), recovered on construction.

    ``max_bytes`` caps the bytes on disk: an append that would pass it is refused
    (:attr:`dropped`). Not thread-safe; used from the event loop only.
    """

    def __init__(
        self,
        path_dir: Path,
        *,
        fsync: str,
        max_bytes: int,
        segment_bytes: int | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        self.dir = Path(path_dir)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(64 * 1024, min(4 << 20, max_bytes // 16))
        #: appends refused because of the cap
        self.dropped = 0
        #: lines skipped because they did not decode
        self.corrupt = 0
        #: torn last lines cut off when the spool was opened
        self.torn = 0
        self._sizes: dict[int, int] = {}  # segment -> bytes on disk
        self._acked: dict[int, int] = {}  # segment -> bytes already replayed
        self._pending = 0  # complete lines not yet acked
        self._fd: int | None = None  # the segment appended to (the highest)
        self._fd_seg = 0
        self._dirty = False  # appended since the last fsync
        self._last_sync = time.monotonic()
        self._marks: list[tuple[int, int, int]] = []  # after read_pending: (seg, end, lines)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._recover()

    # -- state --------------------------------------------------------------------------------

    def pending(self) -> int:
        """Events (lines) in the spool not yet acknowledged as replayed."""
        return self._pending

    @property
    def bytes(self) -> int:
        """Bytes the spool's segments take on disk."""
        return sum(self._sizes.values())

    def _path(self, seg: int, suffix: str = ".log") -> Path:
        return self.dir / f"{seg}{suffix}"

    def _recover(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()  # a push_front or ack write the process did not finish
        segs = sorted(int(p.stem) for p in self.dir.glob("*.log") if p.stem.lstrip("-").isdigit())
        for seg in segs:
            path = self._path(seg)
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # a torn last write: cut it off, keep the rest
                self.torn += 1
                with path.open("r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            acked = self._read_ack(seg, end)
            if acked >= end:
                self._remove(seg)
                continue
            self._sizes[seg] = end
            self._acked[seg] = acked
            self._pending += data.count(b"\n", acked, end)
        for ack in self.dir.glob("*.ack"):
            if ack.stem.lstrip("-").isdigit() and int(ack.stem) not in self._sizes:
                ack.unlink()

    def _read_ack(self, seg: int, size: int) -> int:
        try:
            text = self._path(seg, ".ack").read_text().strip()
            acked = int(text)
        except (OSError, ValueError):
            return 0
        if acked < 0 or acked > size:
            return 0
        return acked

    # -- writing ------------------------------------------------------------------------------

    def append(self, ev: RecordEvent) -> bool:
        """Add ``ev`` at the end. False (and ``dropped`` + 1) when the cap would be passed or the
        disk refuses the write; never raises."""
        line = encode(ev)
        if self.bytes + len(line) > self.max_bytes:
            self.dropped += 1
            return False
        try:
            fd = self._writer(len(line))
            written = os.write(fd, line)
            if written != len(line):  # disk full mid-line: cut the partial line off again
                os.ftruncate(fd, self._sizes[self._fd_seg])
                self.dropped += 1
                return False
        except OSError:
            self.dropped += 1
            return False
        self._sizes[self._fd_seg] += len(line)
        self._pending += 1
        self._dirty = True
        if self.fsync == "always":
            self._sync_now()
        elif self.fsync == "batch" and time.monotonic() - self._last_sync >= 2 * BATCH_INTERVAL:
            self._sync_now()  # nobody called flush() / dup_for_sync() in time: do it here
        return True

    def _writer(self, incoming: int) -> int:
        if self._fd is not None and self._sizes[self._fd_seg] + incoming > self.segment_bytes:
            self._close_writer()  # rotate: the full segment stays until it is replayed
        if self._fd is None:
            if self._sizes:
                last = max(self._sizes)
                seg = last if self._sizes[last] + incoming <= self.segment_bytes else last + 1
            else:
                seg = _FIRST_SEGMENT
            self._fd = os.open(self._path(seg), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_seg = seg
            if seg not in self._sizes:
                self._sizes[seg] = 0
                self._acked[seg] = 0
                self._sync_dir()
        return self._fd

    def push_front(self, events: Sequence[RecordEvent]) -> int:
        """Put ``events`` (in order) BEFORE everything pending: they are older than what the
        spool holds (the writer's in-flight batch and queue when Redis fails while the spool is
        not empty). Written to a new lowest segment, atomically. Returns how many were kept
        (all, or none and ``dropped`` += len when the cap would be passed)."""
        if not events:
            return 0
        self._marks = []  # a read in progress is void: segment order changes
        data = b"".join(encode(ev) for ev in events)
        if self.bytes + len(data) > self.max_bytes:
            self.dropped += len(events)
            return 0
        if not self._sizes:
            return sum(self.append(ev) for ev in events)
        seg = min(self._sizes) - 1
        tmp = self._path(seg, ".log.tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
                if self.fsync != "never":
                    f.flush()
                    os.fsync(f.fileno())
            tmp.rename(self._path(seg))
            self._sync_dir()
        except OSError:
            tmp.unlink(missing_ok=True)
            self.dropped += len(events)
            return 0
        self._sizes[seg] = len(data)
        self._acked[seg] = 0
        self._pending += len(events)
        return len(events)

    # -- durability ---------------------------------------------------------------------------

    def sync_due(self) -> bool:
        """``batch`` policy: whether an fsync is due (appended and not synced for a while)."""
        return self._dirty and time.monotonic() - self._last_sync >= BATCH_INTERVAL

    def dup_for_sync(self) -> int | None:
        """A duplicate of the append segment's descriptor for an fsync off the event loop (the
        caller fsyncs and closes it), marking the spool clean; None when nothing to sync."""
        if not self._dirty or self._fd is None:
            return None
        self._dirty = False
        self._last_sync = time.monotonic()
        return os.dup(self._fd)

    def flush(self) -> None:
        """fsync what was appended (every policy, ``never`` included)."""
        if self._dirty:
            self._sync_now()

    def _sync_now(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _sync_dir(self) -> None:
        if self.fsync == "never":
            return
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _close_writer(self) -> None:
        if self._fd is not None:
            if self._dirty and self.fsync != "never":
                self._sync_now()
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """fsync (unless ``never``) and close. The spool can be opened again from its dir."""
        self._close_writer()

    # -- replay -------------------------------------------------------------------------------

    def read_pending(self, limit: int | None = None) -> list[RecordEvent]:
        """Up to ``limit`` pending events, oldest first, without consuming them; :meth:`ack`
        says how many of them are done."""
        out: list[RecordEvent] = []
        marks: list[tuple[int, int, int]] = []  # after each event: (segment, offset, lines)
        lines = 0
        last = (0, 0)
        for seg, end, line in self._lines():
            lines += 1
            last = (seg, end)
            ev = decode(line)
            if ev is None:
                self.corrupt += 1
                continue
            out.append(ev)
            marks.append((seg, end, lines))
            if limit is not None and len(out) >= limit:
                break
        else:
            if lines and (not marks or marks[-1][2] < lines):
                # undecodable lines at the very end: consumed with the last event, or now
                if not out:
                    self._ack_to(last[0], last[1], lines)
                else:
                    marks[-1] = (last[0], last[1], lines)
        self._marks = marks
        return out

    def __iter__(self) -> Iterator[RecordEvent]:
        """All pending events, oldest first (read-only)."""
        for _, _, line in self._lines():
            ev = decode(line)
            if ev is not None:
                yield ev

    def _lines(self) -> Iterator[tuple[int, int, builtins.bytes]]:
        for seg in sorted(self._sizes):
            pos, size = self._acked[seg], self._sizes[seg]
            if pos >= size:
                continue
            with self._path(seg).open("rb") as f:
                f.seek(pos)
                while pos < size:
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break
                    pos += len(line)
                    yield seg, pos, line

    def ack(self, n: int) -> None:
        """The first ``n`` events of the last :meth:`read_pending` are in Redis: never replay
        them again. Fully replayed segments are deleted."""
        if n <= 0:
            return
        if n > len(self._marks):
            raise ValueError(f"ack({n}) after a read of {len(self._marks)} events")
        seg, end, lines = self._marks[n - 1]
        self._marks = []
        self._ack_to(seg, end, lines)

    def _ack_to(self, seg: int, end: int, lines: int) -> None:
        self._pending -= lines
        for s in sorted(self._sizes):
            if s < seg:
                self._remove(s)
            elif s == seg:
                if end >= self._sizes[s]:
                    self._remove(s)
                else:
                    self._acked[s] = end
                    self._write_ack(s, end)
                break

    def _write_ack(self, seg: int, end: int) -> None:
        tmp = self._path(seg, ".ack.tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(f"{end}\n")
                if self.fsync == "always":
                    f.flush()
                    os.fsync(f.fileno())
            tmp.replace(self._path(seg, ".ack"))
        except OSError:
            pass  # at worst the events are replayed again (the writer dedups)

    def _remove(self, seg: int) -> None:
        if seg == self._fd_seg and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._path(seg).unlink(missing_ok=True)
        self._path(seg, ".ack").unlink(missing_ok=True)
        self._sizes.pop(seg, None)
        self._acked.pop(seg, None)
