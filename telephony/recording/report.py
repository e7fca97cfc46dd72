"""``handoffctl report``: the monthly KPI report of 911 -> 988 transfers, read from Redis.

Three steps, each testable alone (docs/report.md):

1. :func:`load` reads the records contract's layout (docs/records.md): ``P transfers:by_time``
   and ``P calls:by_time`` in ``[from, to)``, then each ``P transfer:<id>`` hash (``HGETALL``) and
   each ``P call:<id>`` hash (``HMGET``), pipelined in chunks, filtered by PSAP. The result is a
   :class:`Dataset` of frozen :class:`Transfer` and :class:`Call` rows.
2. :func:`compute` (pure) turns a dataset into a :class:`Report`: totals, diversion rate,
   outcomes, abandonment by phase, time to destination answer p50/p90/p99 (nearest-rank), and the
   share answered within ``records.answer_interval`` (shared/domain/004 §IV.F.2 style), overall and
   per PSAP, destination, mode and triage level.
3. :func:`render` writes it as an aligned ``table``, one ``json`` object, or ``csv`` with one row
   per transfer (times as HHMMSS in the report's time zone, 004 §IV.H.5).

:func:`parse_range` turns ``--from``/``--to`` into epoch ms in a time zone; :func:`main_report`
is ``handoffctl report ...`` and :func:`run_report` the same given parsed values.

This module holds the I/O (:func:`load`, the command line) and re-exports the public names of the
two pure parts: :mod:`.report_kpi` (range, rows, figures: step 1's types and step 2) and
:mod:`.report_render` (step 3). Import from here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from telephony.recording.report_kpi import (
    FORMATS,
    MAX_RANGE_DAYS,
    NONE,
    PERCENTILES,
    TIMES,
    Call,
    Dataset,
    Figures,
    Report,
    ReportError,
    Transfer,
    _int,
    compute,
    epoch_ms,
    figures,
    hhmmss,
    is_within,
    local,
    local_zone,
    nearest_rank,
    parse_range,
    zone,
    zone_name,
)
from telephony.recording.report_render import CSV_COLUMNS, csv_row, render

__all__ = [
    "CHUNK",
    "CSV_COLUMNS",
    "FORMATS",
    "MAX_RANGE_DAYS",
    "NONE",
    "PERCENTILES",
    "TIMES",
    "Call",
    "Dataset",
    "Figures",
    "Report",
    "ReportError",
    "StoreError",
    "Transfer",
    "compute",
    "csv_row",
    "epoch_ms",
    "figures",
    "hhmmss",
    "is_within",
    "load",
    "local",
    "local_zone",
    "main_report",
    "nearest_rank",
    "parse_range",
    "render",
    "report_parser",
    "run_report",
    "zone",
    "zone_name",
]

#: hashes fetched per pipeline round trip
CHUNK = 500


class StoreError(Exception):
    """Redis could not be reached or read."""

    exit_code = 1


# ----------------------------------------------------------------------------------- load


def _where(url: str) -> str:
    """Where ``url`` points, without credentials, for messages."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


async def _chunked(client: Any, keys: Sequence[str], call: Callable[[Any, str], Any]) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(keys), CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in keys[i : i + CHUNK]:
            call(pipe, key)
        out.extend(await pipe.execute())
    return out


async def load(redis_url: str, prefix: str, from_ms: int, to_ms: int, psap: str | None) -> Dataset:
    """Read the transfers requested and the calls offered in ``[from_ms, to_ms)`` from the Redis
    at ``redis_url`` (keys under ``prefix``), of ``psap`` only when given. Raises
    :class:`StoreError` when Redis cannot be reached or read."""
    client: Any = aioredis.Redis.from_url(
        redis_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30, retry=None
    )
    upper = f"({to_ms}"
    try:
        tmembers = await client.zrangebyscore(
            f"{prefix}transfers:by_time", from_ms, upper, withscores=True
        )
        cmembers = await client.zrangebyscore(
            f"{prefix}calls:by_time", from_ms, upper, withscores=True
        )
        thashes = await _chunked(
            client, [f"{prefix}transfer:{m}" for m, _ in tmembers], lambda p, k: p.hgetall(k)
        )
        cvalues = await _chunked(
            client,
            [f"{prefix}call:{m}" for m, _ in cmembers],
            lambda p, k: p.hmget(k, ["call_id", "psap", "offered_ms"]),
        )
    except (RedisError, OSError) as exc:
        raise StoreError(
            f"cannot read the records from Redis at {_where(redis_url)}: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
    transfers: list[Transfer] = []
    missing_t = 0
    for (member, score), h in zip(tmembers, thashes, strict=True):
        if not h:
            missing_t += 1
        elif psap is None or h.get("psap") == psap:
            transfers.append(Transfer.from_hash(member, h, score))
    calls: list[Call] = []
    missing_c = 0
    for (member, score), (cid, cpsap, offered) in zip(cmembers, cvalues, strict=True):
        if cid is None:
            missing_c += 1
        elif psap is None or cpsap == psap:
            offered_ms = _int(offered)
            calls.append(Call(member, int(score) if offered_ms is None else offered_ms, cpsap))
    transfers.sort(key=lambda t: (t.requested_ms, t.transfer_id))
    return Dataset(from_ms, to_ms, psap, tuple(transfers), tuple(calls), missing_t, missing_c)


# ----------------------------------------------------------------------------------- main


def _settings(config_path: str | None, redis_url: str | None) -> tuple[str, str, float]:
    from telephony.config import load_config  # noqa: PLC0415
    from telephony.config.model import DEFAULT_REDIS_URL, RecordsConfig, check_redis_url  # noqa: PLC0415

    if config_path is not None:
        cfg = load_config(config_path)
        url, records = cfg.redis_url, cfg.records
    else:
        url, records = DEFAULT_REDIS_URL, RecordsConfig()
    if redis_url is not None:
        try:
            url = check_redis_url(redis_url)
        except ValueError as exc:
            raise ReportError(f"--redis-url: {exc}") from None
    return url, records.key_prefix, records.answer_interval


async def run_report(
    *,
    from_text: str,
    to_text: str,
    psap: str | None = None,
    fmt: str = "table",
    config_path: str | None = None,
    redis_url: str | None = None,
    tz_name: str | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``handoffctl report`` given parsed values: 0 and the report on ``stdout``; 2 and the
    message on ``stderr`` for a bad argument; 1 for a bad config or an unreachable Redis."""
    from telephony.config import ConfigError  # noqa: PLC0415

    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        tz = zone(tz_name)
        start, end = parse_range(from_text, to_text, tz)
        if fmt not in FORMATS:
            raise ReportError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
        if psap is not None and not psap.strip():
            raise ReportError("--psap: empty PSAP id")
        url, prefix, interval = _settings(config_path, redis_url)
        dataset = await load(url, prefix, start, end, psap)
    except (ReportError, StoreError) as exc:
        print(f"handoffctl report: {exc}", file=err)
        return exc.exit_code
    except ConfigError as exc:
        print(f"handoffctl report: configuration not valid:\n{exc}", file=err)
        return 1
    report = compute(dataset, answer_interval=interval)
    out.write(render(report, dataset.transfers, fmt, tz=tz))
    return 0


#: ``handoffctl report`` options: flag, dest, metavar, help
_OPTIONS = (
    ("--from", "from_text", "DATE", "first day (YYYY-MM-DD) or instant (YYYY-MM-DDTHH:MM[:SS])"),
    ("--to", "to_text", "DATE", "last day, included (YYYY-MM-DD), or end instant, excluded"),
    ("--psap", "psap", "ID", "only this PSAP's calls and transfers"),
    ("--config", "config_path", "FILE", "handoffd config (redis.url, records.*)"),
    ("--redis-url", "redis_url", "URL", "override redis.url"),
    ("--tz", "tz_name", "ZONE", "time zone (IANA name or UTC); default: the machine's"),
)


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handoffctl report",
        description="KPI report of 911 -> 988 transfers recorded in Redis (docs/report.md).",
    )
    for flag, dest, metavar, text in _OPTIONS:
        required = flag in ("--from", "--to")
        parser.add_argument(flag, dest=dest, metavar=metavar, help=text, required=required)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="table")
    return parser


def main_report(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``handoffctl report ARGS``: parse ``argv`` and run :func:`run_report` (130 on Ctrl-C)."""
    err = stderr if stderr is not None else sys.stderr
    try:
        with contextlib.redirect_stdout(stdout or sys.stdout), contextlib.redirect_stderr(err):
            args = report_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    values = {f: getattr(args, f) for f in vars(args)}
    try:
        return asyncio.run(run_report(**values, stdout=stdout, stderr=err))
    except KeyboardInterrupt:  # the report is written in one piece at the end: none of it was
        print("handoffctl report: interrupted", file=err)
        return 130
