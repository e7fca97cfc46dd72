"""A real Prometheus server (Debian package ``prometheus``) on a free loopback port.

:class:`PrometheusServer` writes a config that scrapes the given ``host:port`` targets every
``scrape_interval`` (1 s by default, so a test sees data within seconds), keeps its TSDB in the
test's own directory, and stops with SIGTERM (then SIGKILL). :meth:`PrometheusServer.query` runs
an instant query through the HTTP API (``/api/v1/query``); :meth:`PrometheusServer.aquery` does it
in a thread, so a test that runs handoffd in its own event loop keeps serving the scrapes.

The dashboard helpers at the end read config/grafana/dashboards/handoff.json and expand each
panel query as Grafana would (:func:`expand`), so tests can run them against a real server.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.sipp import free_port

#: one sample of an instant vector, as the API returns it: {"metric": {...}, "value": [t, "v"]}
Sample = dict[str, Any]


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


def prometheus_binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` (or ``promtool``); a clear error when it is not installed."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise PrometheusError(
            f"{name} not found: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus; `make system` does this)"
        )
    return path


def value(sample: Sample) -> float:
    """The number of one instant-vector sample (``NaN`` and ``+Inf`` included)."""
    return float(sample["value"][1])


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (``host:port``, path ``/metrics``) as job ``job``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        scrape_interval: str = "1s",
        job: str = "handoffd",
        rule_files: Sequence[Path] = (),
        evaluation_interval: str = "1s",
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.targets = tuple(targets)
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.job = job
        self.rule_files = tuple(rule_files)
        self.port = port or free_port(socket.SOCK_STREAM)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        rules = "".join(f"  - {json.dumps(str(p))}\n" for p in self.rule_files)
        targets = ", ".join(json.dumps(t) for t in self.targets)
        return (
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  scrape_timeout: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.evaluation_interval}\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n"
            f"  - job_name: {json.dumps(self.job)}\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )

    def start(self, timeout: float = 20.0) -> None:
        binary = prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text())
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.proc.returncode}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready on port {self.port}: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP API -------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a ``success`` answer, else PrometheusError."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400/422: a bad query, with the reason in JSON
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; the samples of the vector (a scalar becomes one unlabelled one)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[Sample] = data["result"]
        return result

    async def aquery(self, expr: str, at: float | None = None) -> list[Sample]:
        return await asyncio.to_thread(self.query, expr, at)

    async def wait_for(
        self,
        expr: str,
        check: Callable[[list[Sample]], bool],
        timeout: float = 15.0,
        what: str = "",
    ) -> list[Sample]:
        """Query ``expr`` until ``check(result)`` holds; the last result, or AssertionError."""
        deadline = time.monotonic() + timeout
        result: list[Sample] = []
        while time.monotonic() < deadline:
            result = await self.aquery(expr)
            if check(result):
                return result
            await asyncio.sleep(0.25)
        raise AssertionError(f"not within {timeout} s: {what or expr} (last result {result})")

    def targets_health(self) -> list[str]:
        """``health`` of every active target (``up``, ``down`` or ``unknown``)."""
        data = self.api("targets", state="active")
        return [t["health"] for t in data["activeTargets"]]


# -- the dashboard's queries, as Grafana would send them ---------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "handoff.json"
#: Grafana's built-in interval variables, fixed for tests (their data is under a minute old)
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


@dataclass(frozen=True)
class PanelQuery:
    panel: str  # the panel's title
    ref: str  # the target's refId
    expr: str  # the PromQL as written in the dashboard, with its variables
    instant: bool


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included, rows themselves excluded."""
    out: list[dict[str, Any]] = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def panel_queries(dash: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(p["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for p in panels(dash)
        for t in p.get("targets", [])
    ]


def variable_defaults(dash: dict[str, Any]) -> dict[str, str]:
    """Each template variable's default as Grafana substitutes it in a Prometheus query: the
    current value, the ``allValue`` when that is "All", alternatives joined by ``|``."""
    values: dict[str, str] = {}
    for v in dash["templating"]["list"]:
        current = v.get("current", {}).get("value")
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen:
            values[v["name"]] = v["allValue"]
        else:
            values[v["name"]] = "|".join(str(c) for c in chosen)
    return values


def expand(expr: str, values: dict[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced from ``values`` (and the
    built-ins); anything else (``$1`` in a label_replace) stays, as in Grafana."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return {**BUILTINS, **values}.get(name, m.group(0))

    return _VARIABLE.sub(sub, expr)
