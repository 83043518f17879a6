"""Anomaly detection on a session's and a tenant's own signals: bursts of tool calls, repeated policy refusals,
and executions far slower than their history.

Pure: every observation comes with its timestamp (monotonic seconds), so synthetic streams test it exactly. Each
detector fires when its threshold is reached, then stays quiet for one window per scope, so a sustained burst is
one event per window, not one per call.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["tool_call_burst", "policy_refusals", "slow_execution"]
Scope = Literal["session", "tenant"]
HISTORY = 50  # durations kept per session and per tenant for the slow-execution median


class Thresholds(BaseModel):
    """When the anomaly detectors fire; each applies to one session and, separately, to one tenant."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    burst_calls: int = Field(default=200, ge=1)
    """Tool calls within `burst_window_s` that make a burst."""
    burst_window_s: float = Field(default=10.0, gt=0)
    """The sliding window of the tool-call burst detector, in seconds."""
    refusals: int = Field(default=10, ge=1)
    """Policy refusals within `refusal_window_s` that make an anomaly."""
    refusal_window_s: float = Field(default=60.0, gt=0)
    """The sliding window of the refusal detector, in seconds."""
    slow_factor: float = Field(default=5.0, gt=1)
    """An execution slower than this many times the median of its history is anomalous."""
    slow_min_samples: int = Field(default=5, ge=1)
    """Executions of history needed before the slow-execution detector judges."""
    slow_window_s: float = Field(default=300.0, gt=0)
    """After a slow execution is reported, how long others of the same scope are not, in seconds."""


def scopes(session: str, tenant: str) -> tuple[tuple[Scope, str], tuple[Scope, str]]:
    return ("session", session), ("tenant", tenant)


@dataclass(frozen=True)
class Anomaly:
    """One detection: `value` is what was seen (calls, refusals, or seconds), `threshold` what it passed."""

    kind: Kind
    scope: Scope
    key: str
    value: float
    threshold: float


@dataclass
class _Window:
    """Timestamps within a sliding window, and when this window last fired."""

    times: deque[float] = field(default_factory=deque)
    fired_at: float | None = None

    def add(self, now: float, window_s: float, threshold: int) -> int | None:
        """Record one event; the count in the window when it reaches `threshold` outside the quiet time."""
        self.times.append(now)
        while self.times and self.times[0] <= now - window_s:
            self.times.popleft()
        if len(self.times) < threshold or (self.fired_at is not None and now - self.fired_at < window_s):
            return None
        self.fired_at = now
        return len(self.times)


@dataclass
class _History:
    """Recent execution durations and when a slow one was last reported."""

    durations: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    fired_at: float | None = None


class Detector:
    """Per-session and per-tenant detectors; `forget` a session when it ends (tenants are few and stay)."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._bursts: dict[tuple[Scope, str], _Window] = {}
        self._refusals: dict[tuple[Scope, str], _Window] = {}
        self._histories: dict[tuple[Scope, str], _History] = {}

    def tool_call(self, session: str, tenant: str, now: float) -> list[Anomaly]:
        limits = self.thresholds
        return self._count(self._bursts, "tool_call_burst", session, tenant, now, limits.burst_window_s,
                           limits.burst_calls)  # fmt: skip

    def refusal(self, session: str, tenant: str, now: float) -> list[Anomaly]:
        limits = self.thresholds
        return self._count(self._refusals, "policy_refusals", session, tenant, now, limits.refusal_window_s,
                           limits.refusals)  # fmt: skip

    def execution(self, session: str, tenant: str, duration_s: float, now: float) -> list[Anomaly]:
        """Judge a finished execution against the scope's history before it joins that history."""
        limits = self.thresholds
        found = []
        for scope, key in scopes(session, tenant):
            history = self._histories.setdefault((scope, key), _History())
            if len(history.durations) >= limits.slow_min_samples:
                bound = limits.slow_factor * statistics.median(history.durations)
                quiet = history.fired_at is not None and now - history.fired_at < limits.slow_window_s
                if duration_s > bound and not quiet:
                    history.fired_at = now
                    found.append(Anomaly("slow_execution", scope, key, duration_s, bound))
            history.durations.append(duration_s)
        return found

    def forget(self, session: str) -> None:
        for table in (self._bursts, self._refusals, self._histories):
            table.pop(("session", session), None)

    @staticmethod
    def _count(
        table: dict[tuple[Scope, str], _Window],
        kind: Kind,
        session: str,
        tenant: str,
        now: float,
        window_s: float,
        threshold: int,
    ) -> list[Anomaly]:
        found = []
        for scope, key in scopes(session, tenant):
            count = table.setdefault((scope, key), _Window()).add(now, window_s, threshold)
            if count is not None:
                found.append(Anomaly(kind, scope, key, count, threshold))
        return found
