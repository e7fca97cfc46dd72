"""``handoffctl events``: the event stream ``<prefix>events`` as JSON lines, for CAD integrators.

:func:`recent` prints what the stream holds (its last entries, or those after a stream id) and
returns. :func:`follow` tails it. Without a group it is a plain ``XREAD`` tail (nothing is
remembered between runs). With a group it reads as ``consumer`` of that consumer group (created
if missing, ``MKSTREAM``), first the entries this consumer was given but never acknowledged (a
previous run that crashed), then new ones, and ``XACK`` s each entry once it is printed.
:func:`main_events` is ``handoffctl events ...``. See "For CAD integrators" in docs/records.md.

Output: one JSON object per line, the entry's fields (after the records' PHI rule) plus its
``stream_id``; stdout carries nothing else. Status lines (``following ...``, Redis lost / back)
go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from telephony.tasks import cancel_and_wait

#: how long one blocking read waits (ms) before it is issued again
BLOCK_MS = 2000
#: entries per read
READ_COUNT = 100
#: wait before reading again after Redis went away (seconds)
RETRY_S = 1.0
#: a reply slower than this means the connection is dead (a blocking read waits BLOCK_MS first)
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 10.0
CONNECT_TIMEOUT_S = 5.0
#: entries ``handoffctl events`` prints without ``--follow`` when ``--count`` is not given
RECENT_COUNT = 10

Entries = list[tuple[str, dict[str, str]]]
Note = Callable[[str], None]

_STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_LOST = (RedisConnectionError, RedisTimeoutError)


def default_consumer() -> str:
    """A consumer name unique to this process: ``<host>-<pid>``. Entries it was given and did not
    acknowledge stay pending under this name when it dies: a stable name is better."""
    return f"{socket.gethostname()}-{os.getpid()}"


def where(url: str) -> str:
    """Where ``url`` points, without credentials, for messages."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


def _line(stream_id: str, fields: dict[str, str]) -> str:
    return json.dumps({"stream_id": stream_id, **fields}, ensure_ascii=False)


def _client(redis_url: str) -> Any:
    # no retries inside redis-py: the loops below retry, and a first connection fails at once
    return aioredis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        retry=None,
    )


async def recent(redis_url: str, prefix: str, *, start: str | None, count: int, out: TextIO) -> int:
    """Print entries of ``<prefix>events`` to ``out`` and return how many: the last ``count``
    (oldest first) when ``start`` is None, else the first ``count`` after stream id ``start``
    (``"0"``: from the beginning). Redis errors propagate."""
    key = f"{prefix}events"
    client = _client(redis_url)
    try:
        if start is None:
            entries: Entries = list(reversed(await client.xrevrange(key, count=count)))
        else:
            low = "-" if start in ("0", "0-0") else f"({start}"
            entries = await client.xrange(key, min=low, count=count)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
    for stream_id, fields in entries:
        out.write(_line(stream_id, fields) + "\n")
    out.flush()
    return len(entries)


async def follow(
    redis_url: str,
    prefix: str,
    *,
    group: str | None,
    consumer: str | None,
    start: str,
    count: int | None,
    out: TextIO,
    stop: asyncio.Event | None = None,
    note: Note | None = None,
) -> int:
    """Print entries of ``<prefix>events`` to ``out``, one JSON object per line with its
    ``stream_id``; return how many were printed. ``start``: ``"$"`` only new entries, ``"0"``
    from the beginning, or a stream id to continue after (with a group: where a NEW group
    starts). Runs until ``stop`` is set (a read in progress is abandoned; entries already read
    are printed and acknowledged first), until cancelled, or until ``count`` entries.

    The first contact with Redis (``PING``, then pinning ``$`` or creating the group) is not
    retried: its error propagates, so a wrong URL fails at once. After that a lost connection is
    retried every :data:`RETRY_S` seconds. ``note`` gets one-line status messages (following,
    Redis lost, Redis back)."""
    key = f"{prefix}events"
    client = _client(redis_url)
    reader = _Reader(
        client=client,
        key=key,
        count=count,
        out=out,
        stop=stop,
        note=note or (lambda _msg: None),
        where=where(redis_url),
    )
    try:
        if await reader.read(client.ping()) is _STOPPED:
            pass  # stopped while still connecting
        elif group is None:
            await _tail(reader, start)
        else:
            await _group(reader, group, consumer or default_consumer(), start)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
    return reader.printed


class _Stopped:
    """What :meth:`_Reader.read` returns when ``stop`` was set before the reply came."""


_STOPPED = _Stopped()


class _Reader:
    """The state one :func:`follow` shares between its loop and its helpers."""

    def __init__(
        self,
        *,
        client: Any,
        key: str,
        count: int | None,
        out: TextIO,
        stop: asyncio.Event | None,
        note: Note,
        where: str,
    ) -> None:
        self.client = client
        self.key = key
        self.count = count
        self.out = out
        self.stop = stop
        self.note = note
        self.where = where
        self.printed = 0
        self.down = False

    def more(self) -> bool:
        stopped = self.stop is not None and self.stop.is_set()
        return not stopped and (self.count is None or self.printed < self.count)

    def room(self) -> int:
        return READ_COUNT if self.count is None else min(READ_COUNT, self.count - self.printed)

    async def read(self, call: Coroutine[Any, Any, Any]) -> Any:
        """The reply of ``call``, or :data:`_STOPPED` when ``stop`` was set first (the call is
        cancelled: redis-py then drops that connection)."""
        stop = self.stop
        if stop is None:
            return await call
        task = asyncio.ensure_future(call)
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not task.done():
                await cancel_and_wait(task)
        if task.cancelled() or (task.exception() is not None and stop.is_set()):
            return _STOPPED
        return task.result()

    def emit(self, stream_id: str, fields: dict[str, str]) -> None:
        self.out.write(_line(stream_id, fields) + "\n")
        self.printed += 1

    def lost(self, exc: Exception) -> None:
        if not self.down:
            self.down = True
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self.note(f"lost Redis at {self.where} ({reason}); retrying every {RETRY_S:g} s")

    def back(self) -> None:
        if self.down:
            self.down = False
            self.note(f"Redis at {self.where} is back")

    async def pause(self) -> None:
        if self.stop is None:
            await asyncio.sleep(RETRY_S)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), RETRY_S)


async def _tail(r: _Reader, start: str) -> None:
    last = start
    if last == "$":  # pin "now" to an id so nothing added between two reads is missed
        newest = await r.client.xrevrange(r.key, count=1)
        last = newest[0][0] if newest else "0-0"
    r.note(f"following {r.key} at {r.where} from {start}")
    while r.more():
        try:
            resp = await r.read(r.client.xread({r.key: last}, count=r.room(), block=BLOCK_MS))
        except _LOST as exc:
            r.lost(exc)
            await r.pause()
            continue
        if resp is _STOPPED:
            break
        r.back()
        for _, entries in resp or ():
            for stream_id, fields in entries:
                r.emit(stream_id, fields)
                last = stream_id
        r.out.flush()


async def _ensure_group(client: Any, key: str, group: str, start: str) -> None:
    try:
        await client.xgroup_create(key, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _group(r: _Reader, group: str, consumer: str, start: str) -> None:
    await _ensure_group(r.client, r.key, group, start)
    r.note(f"following {r.key} at {r.where} as consumer {consumer} of group {group}")
    # first what this consumer was given and did not ack ("0": its pending entries), then ">"
    # (new ones). Back to "0" after a lost connection: a reply lost on the way, or an XACK that
    # did not arrive, left entries pending that only this consumer can read again.
    cursor = "0"
    while r.more():
        try:
            resp = await r.read(
                r.client.xreadgroup(
                    group,
                    consumer,
                    {r.key: cursor},
                    count=r.room(),
                    block=BLOCK_MS if cursor == ">" else None,
                )
            )
            if resp is _STOPPED:
                break
            r.back()
            entries: Entries = [e for _, es in resp or () for e in es]
            if cursor != ">" and not entries:
                cursor = ">"
                continue
            done: list[str] = []
            for stream_id, fields in entries:
                done.append(stream_id)
                if cursor != ">":
                    cursor = stream_id
                if fields:  # a pending entry trimmed from the stream has none: nothing to print
                    r.emit(stream_id, fields)
            r.out.flush()
            if done:
                await r.client.xack(r.key, group, *done)
        except _LOST as exc:
            r.lost(exc)
            cursor = "0"
            await r.pause()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            cursor = "0"  # Redis lost the group (a restart without persistence): again
            try:
                await _ensure_group(r.client, r.key, group, start)
            except _LOST as lost:
                r.lost(lost)
                await r.pause()


# ------------------------------------------------------------------------------ handoffctl


class UsageError(Exception):
    """A bad ``handoffctl events`` argument; the message names it."""


def events_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handoffctl events",
        description=(
            "Print transfer events from the Redis stream <records.key_prefix>events (default "
            "handoff:events), one JSON object per line (docs/records.md). Without --follow: "
            "the last --count events (default "
            f"{RECENT_COUNT}), or those after --start, then exit. With --follow: new events "
            "as they come, until Ctrl-C or SIGTERM (exit status 0)."
        ),
    )
    add = parser.add_argument
    add("--follow", "-f", action="store_true", help="keep printing events as they are recorded")
    add("--config", metavar="FILE", help="handoffd config (redis.url, records.key_prefix)")
    add("--redis-url", metavar="URL", help="override redis.url")
    add("--group", metavar="NAME", help="read as a consumer group (needs --consumer, --follow)")
    add("--consumer", metavar="NAME", help="this reader's name in the group (keep it stable)")
    add(
        "--start",
        metavar="ID",
        help="with --follow: '$' only new events (default), '0' from the oldest, or a stream id "
        "to continue after (with --group: where a new group starts); without: print the events "
        "after this stream id",
    )
    add(
        "--count",
        metavar="N",
        type=int,
        help=f"with --follow: stop after N events; without: print N (default {RECENT_COUNT})",
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    if (args.group is None) != (args.consumer is None):
        given, missing = (
            ("--group", "--consumer") if args.consumer is None else ("--consumer", "--group")
        )
        raise UsageError(f"{given} needs {missing} (a consumer reads as a member of a group)")
    for flag, value in (("--group", args.group), ("--consumer", args.consumer)):
        if value is not None and (not value.strip() or value != value.strip()):
            raise UsageError(f"{flag}: {value!r} is not a name (no spaces around it, not empty)")
    if args.group is not None and not args.follow:
        raise UsageError("--group: a consumer group is read with --follow")
    start = args.start
    if start is not None and start != "$" and not _STREAM_ID.fullmatch(start):
        raise UsageError(
            f"--start: {start!r} is not '$', '0' or a stream id (e.g. 1763838321123-0)"
        )
    if start == "$" and not args.follow:
        raise UsageError("--start: '$' (only new events) needs --follow")
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count: {args.count} is not a positive number")


def _settings(config_path: str | None, redis_url: str | None) -> tuple[str, str]:
    from telephony.config import load_config  # noqa: PLC0415
    from telephony.config.model import DEFAULT_REDIS_URL, RecordsConfig, check_redis_url  # noqa: PLC0415

    if redis_url is not None:
        try:
            redis_url = check_redis_url(redis_url)
        except ValueError as exc:
            raise UsageError(f"--redis-url: {exc}") from None
    if config_path is not None:
        cfg = load_config(config_path)
        url, prefix = cfg.redis_url, cfg.records.key_prefix
    else:
        url, prefix = DEFAULT_REDIS_URL, RecordsConfig().key_prefix
    return redis_url or url, prefix


async def _run(args: argparse.Namespace, url: str, prefix: str, out: TextIO, err: TextIO) -> None:
    if not args.follow:
        count = args.count or RECENT_COUNT
        await recent(url, prefix, start=args.start, count=count, out=out)
        return

    def note(msg: str) -> None:
        print(f"handoffctl events: {msg}", file=err, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await follow(
            url,
            prefix,
            group=args.group,
            consumer=args.consumer,
            start=args.start or "$",
            count=args.count,
            out=out,
            stop=stop,
            note=note,
        )
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _stdout() -> TextIO:
    """``sys.stdout``, writing UTF-8 whatever the locale (the JSON is UTF-8)."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper) and out.encoding.lower().replace("-", "") != "utf8":
        out.reconfigure(encoding="utf-8")
    return out


def main_events(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``handoffctl events ARGS``: 0 when done (``--count`` reached, the recent events printed,
    or stopped by SIGINT / SIGTERM, or the reader closed the pipe); 2 and a message on
    ``stderr`` for a bad argument; 1 for a bad config or when Redis cannot be reached or read."""
    from telephony.config import ConfigError  # noqa: PLC0415

    err = stderr if stderr is not None else sys.stderr
    try:
        with contextlib.redirect_stdout(stdout or sys.stdout), contextlib.redirect_stderr(err):
            args = events_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _check(args)
        url, prefix = _settings(args.config, args.redis_url)
    except UsageError as exc:
        print(f"handoffctl events: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"handoffctl events: configuration not valid:\n{exc}", file=err)
        return 1
    out = stdout if stdout is not None else _stdout()
    try:
        asyncio.run(_run(args, url, prefix, out, err))
    except BrokenPipeError:  # the reader went away (`| head`): done
        if stdout is None:  # keep the interpreter's last flush of stdout quiet
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RedisError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        print(
            f"handoffctl events: cannot read {prefix}events from Redis at {where(url)}: {reason}",
            file=err,
        )
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        return 0
    return 0
