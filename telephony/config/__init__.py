"""The daemon's configuration: ``config/handoffd.yaml`` to an immutable :class:`Config`.

:func:`load_config` reads the YAML as marked nodes (never as PyYAML objects), so every problem
names ``file:line`` and YAML 1.1 never turns a number such as ``988`` or ``0988`` into an int:
scalars are read from their source text. Every problem of the file is collected and raised at
once as a :class:`ConfigError`. :func:`with_overrides` applies the ``handoffd`` command-line
flags; :func:`check_config` and :func:`main_check_config` (``handoffctl check-config FILE``)
validate a config together with the routing rules it names. See docs/configuration.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from telephony.config.model import *  # noqa: F403 - the model is part of this package's API
from telephony.config.model import (
    Config,
    ConfigError,
    Listen,
    _wildcard,
    check_redis_url,
    split_hostport,
)
from telephony.config.reader import _Reader

# ------------------------------------------------------------------------------------- API


@dataclass
class _Checked:
    """One reading of a config file, problems included (and its rules' when asked for)."""

    problems: list[str]
    config: Config | None = None
    rule_count: int = 0


def _load(path: str | Path, env: Mapping[str, str] | None, *, rules: bool) -> _Checked:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _Checked([f"{path}: cannot read: {reason}"])
    reader = _Reader(str(path), file.resolve().parent, os.environ if env is None else env)
    out = _Checked([], reader.read(text, file.resolve()))
    out.problems = reader.problems()
    if rules and reader.rules is not None:
        from telephony.routing import RulesError, load_rules  # noqa: PLC0415

        try:
            out.rule_count = len(load_rules(reader.rules, trunks=reader.trunk_names).rules)
        except RulesError as exc:
            out.problems.extend(str(p) for p in exc.problems)
    return out


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and check the config file at ``path``; ``env`` is where ``http.tokens_env`` is looked
    up (default ``os.environ``). Raises :class:`ConfigError` listing every ``file:line: problem``.
    The rules are not loaded here, only their directory checked: see :func:`check_config`."""
    checked = _load(path, env, rules=False)
    if checked.problems or checked.config is None:
        raise ConfigError(checked.problems)
    return checked.config


def with_overrides(
    cfg: Config,
    *,
    sip_listen: str | None = None,
    http_listen: str | None = None,
    redis_url: str | None = None,
) -> Config:
    """``cfg`` with the ``handoffd`` flags applied: ``--sip-listen HOST:PORT`` moves every SIP
    listen socket (each keeps its transport), ``--http-listen HOST:PORT`` the HTTP API and
    ``--redis-url URL`` the recording store. A bad value raises :class:`ConfigError` naming the
    flag."""
    problems: list[str] = []
    sip, http, url = cfg.sip, cfg.http, cfg.redis_url
    if sip_listen is not None:
        try:
            host, port = split_hostport(sip_listen)
        except ValueError as exc:
            problems.append(f"--sip-listen: {sip_listen!r}: {exc}")
        else:
            if _wildcard(host) and sip.advertise is None:
                problems.append(
                    f"--sip-listen: {sip_listen!r} is a wildcard address: set sip.advertise in "
                    f"{cfg.source} to the address peers should use"
                )
            moved = dict.fromkeys(Listen(ls.transport, host, port) for ls in sip.listen)
            sip = replace(sip, listen=tuple(moved))
    if http_listen is not None:
        try:
            host, port = split_hostport(http_listen)
        except ValueError as exc:
            problems.append(f"--http-listen: {http_listen!r}: {exc}")
        else:
            http = replace(http, host=host, port=port)
    if redis_url is not None:
        try:
            url = check_redis_url(redis_url)
        except ValueError as exc:
            problems.append(f"--redis-url: {exc}")
    if problems:
        raise ConfigError(problems)
    return replace(cfg, sip=sip, http=http, redis_url=url)


def check_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of the config at ``path`` and of the routing rules it names (checked against
    the config's trunk names, even when the config itself has problems); empty when all is well."""
    return _load(path, env, rules=True).problems


def main_check_config(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``handoffctl check-config FILE``: 0 and ``FILE: OK (...)`` on stdout when the config and its
    rules are valid; 1 and every ``file:line: problem`` on stderr when not; 2 for a usage error."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = argparse.ArgumentParser(
        prog="handoffctl check-config",
        description="Validate a handoffd config file and the routing rules it names.",
    )
    parser.add_argument("file", metavar="FILE", help="the config file, e.g. config/handoffd.yaml")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    checked = _load(args.file, None, rules=True)
    if checked.problems or checked.config is None:
        for problem in checked.problems:
            print(problem, file=err)
        return 1
    cfg = checked.config
    counts = [(len(cfg.trunks), "trunk"), (len(cfg.positions), "position")]
    counts.append((checked.rule_count, "rule"))
    said = ", ".join(f"{n} {noun}{'' if n == 1 else 's'}" for n, noun in counts)
    print(f"{args.file}: OK ({said})", file=out)
    return 0
