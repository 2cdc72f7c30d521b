"""Reading a metric over a window of time: from Graphite, or from the simulated fleet.

A reader answers one question: which values did this target have between two times?
It says nothing about whether they are good; that is the gates' business. A reader that
cannot answer raises :class:`MetricsUnavailable`, and the gate becomes inconclusive: a
source that is down must never look like a quiet, healthy metric.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from orchestrator.fleet.checks import GraphiteSource, SimulatedSource
from workers.http_call import HttpAnswer, NoAnswer, http_request, safe_url

__all__ = ["GraphiteReader", "MetricReader", "MetricsUnavailable", "SimulatedMetrics"]


class MetricsUnavailable(Exception):
    """The source gave no usable answer: down, an error status, or an answer not understood."""


class MetricReader(Protocol):
    def read(self, target: str, start: datetime, end: datetime) -> list[float]:
        """The target's non-null values between ``start`` and ``end``, oldest first."""
        ...


def _epoch(moment: datetime) -> int:
    # A naive datetime would be read as the worker's local time and shift the window by
    # hours without a word: refuse it rather than judge the wrong minutes.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; give an aware datetime")
    return math.floor(moment.timestamp())


class GraphiteReader:
    """Graphite's render API, ``format=json``.

    A target may name several series (a wildcard, ``groupByNode``...): every non-null
    value of every series is returned, series after series, each oldest first. Gates
    that want one number per moment ask Graphite for it (``sumSeries(...)``) rather
    than have it guessed here.

    Credentials in the source URL (``https://user:password@graphite``) are sent as HTTP
    basic authentication and never appear in an error.
    """

    def __init__(self, source: GraphiteSource) -> None:
        self._base, self._headers = _split_credentials(source.url)
        self._timeout_s = source.timeout_s

    def read(self, target: str, start: datetime, end: datetime) -> list[float]:
        query = urlencode(
            {"target": target, "from": _epoch(start), "until": _epoch(end), "format": "json"}
        )
        url = f"{self._base}/render?{query}"
        try:
            answer = http_request("GET", url, timeout_s=self._timeout_s, headers=self._headers)
        except NoAnswer as exc:
            raise MetricsUnavailable(f"Graphite: {exc}") from exc
        return _values(_series(answer, url))


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user and password, and the header that carries them instead.

    urllib would take ``user:password@host`` for a host name; basic authentication is
    how Graphite behind a proxy expects them.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    token = base64.b64encode(secret.encode()).decode("ascii")
    bare = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return bare, {"Authorization": f"Basic {token}"}


def _series(answer: HttpAnswer, url: str) -> list[object]:
    where = f"Graphite GET {safe_url(url)}"
    if not 200 <= answer.status < 300:
        raise MetricsUnavailable(f"{where}: answered {answer.status}: {answer.excerpt()}")
    try:
        body = answer.json()
    except ValueError as exc:  # JSONDecodeError and undecodable bytes alike
        raise MetricsUnavailable(f"{where}: answer is not JSON: {answer.excerpt()}") from exc
    if not isinstance(body, list):
        raise MetricsUnavailable(f"{where}: expected a list of series: {answer.excerpt()}")
    return body


def _values(series: list[object]) -> list[float]:
    values: list[float] = []
    for one in series:
        points = one.get("datapoints") if isinstance(one, dict) else None
        if not isinstance(points, list):
            raise MetricsUnavailable(f"Graphite: a series without datapoints: {str(one)[:200]}")
        values.extend(v for v in map(_point_value, points) if v is not None)
    # Graphite writes a missing interval as null; NaN and infinities mean no reading too.
    return [v for v in values if math.isfinite(v)]


def _point_value(point: object) -> float | None:
    if isinstance(point, list) and len(point) == 2:
        value = point[0]
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    raise MetricsUnavailable(f"Graphite: a datapoint is not [value, timestamp]: {point!r:.200}")


_GROUPS: Final = ("canary", "baseline", "all")
_POINT_EVERY_S: Final = 10  # as often as a StatsD flush


class SimulatedMetrics:
    """The simulated fleet's metrics, computed from which version each host runs.

    A target is ``<metric>`` or ``<metric>:<group>``, the group being ``canary``,
    ``baseline`` or ``all`` (the default). Its value is the sum, over the group's hosts,
    of what the metric is for the version the host runs. A window that ends at or before
    ``changed_at`` sees the versions from before the change; a later one sees them as
    they are now. A window gets one point per 10 s (at least one), all equal.
    """

    def __init__(
        self,
        source: SimulatedSource,
        *,
        hosts_by_group: Mapping[str, Sequence[str]],
        versions_now: Callable[[], Mapping[str, str]],
        versions_before: Mapping[str, str],
        changed_at: datetime,
    ) -> None:
        self._source = source
        self._hosts_by_group = hosts_by_group
        self._versions_now = versions_now
        self._versions_before = versions_before
        self._changed_at = changed_at

    def read(self, target: str, start: datetime, end: datetime) -> list[float]:
        name, _, group = target.strip().partition(":")
        metric = self._source.metrics.get(name)
        if metric is None:
            known = ", ".join(sorted(self._source.metrics))
            raise MetricsUnavailable(f"no simulated metric {name!r} (known: {known})")
        hosts = self._hosts(group or "all")
        # Asked lazily: the fleet's versions move while a release runs.
        versions = self._versions_before if end <= self._changed_at else self._versions_now()
        value = math.fsum(metric.by_version.get(versions.get(h, ""), metric.value) for h in hosts)
        points = max(1, int((end - start).total_seconds() // _POINT_EVERY_S))
        return [value] * points

    def _hosts(self, group: str) -> Sequence[str]:
        if group not in _GROUPS:
            raise MetricsUnavailable(f"unknown group {group!r}: use {', '.join(_GROUPS)}")
        hosts = self._hosts_by_group.get(group)
        if hosts is None:
            raise MetricsUnavailable(f"the simulated fleet has no {group!r} hosts here")
        return hosts
