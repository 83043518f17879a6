"""Anomaly detectors, driven by synthetic timestamped streams: exact thresholds, one event per window, per scope."""

from __future__ import annotations

from controller.anomalies import Anomaly, Detector, Thresholds


def kinds(found: list[Anomaly]) -> list[tuple[str, str, str]]:
    return [(anomaly.kind, anomaly.scope, anomaly.key) for anomaly in found]


def test_a_burst_fires_exactly_at_the_threshold_not_below():
    detector = Detector(Thresholds(burst_calls=5, burst_window_s=10))
    found = [detector.tool_call("s1", "t1", now=float(second)) for second in range(5)]
    assert found[:4] == [[], [], [], []]
    assert kinds(found[4]) == [("tool_call_burst", "session", "s1"), ("tool_call_burst", "tenant", "t1")]
    assert found[4][0].value == 5 and found[4][0].threshold == 5


def test_calls_spread_wider_than_the_window_are_no_burst():
    detector = Detector(Thresholds(burst_calls=3, burst_window_s=10))
    # Three calls, but the first has left the window (it is exactly window_s old) when the third arrives.
    assert [detector.tool_call("s1", "t1", now) for now in (0.0, 5.0, 10.0, 20.0, 30.0)] == [[]] * 5


def test_a_sustained_burst_fires_once_per_window():
    detector = Detector(Thresholds(burst_calls=3, burst_window_s=10))
    fired_at = [now / 10 for now in range(0, 250, 5) if detector.tool_call("s1", "t1", now / 10)]
    # One call every half second: the threshold is reached at 1.0 s, then again once per 10 s window.
    assert fired_at == [1.0, 11.0, 21.0]


def test_the_tenant_sees_a_burst_spread_over_its_sessions():
    detector = Detector(Thresholds(burst_calls=4, burst_window_s=10))
    found = [detector.tool_call(f"s{index % 2}", "t1", float(index)) for index in range(4)]
    assert kinds(found[3]) == [("tool_call_burst", "tenant", "t1")]
    assert detector.tool_call("s9", "t2", 4.0) == []  # another tenant has its own window


def test_repeated_refusals_fire_at_the_threshold_within_their_window():
    detector = Detector(Thresholds(refusals=3, refusal_window_s=60))
    assert detector.refusal("s1", "t1", 0.0) == []
    assert detector.refusal("s1", "t1", 30.0) == []
    assert kinds(detector.refusal("s1", "t1", 59.0)) == [
        ("policy_refusals", "session", "s1"),
        ("policy_refusals", "tenant", "t1"),
    ]
    assert detector.refusal("s1", "t1", 70.0) == []  # three in the window again, but within its quiet time
    assert detector.refusal("s2", "t2", 70.0) == []


def test_a_slow_execution_is_judged_against_its_own_history_only_after_enough_samples():
    detector = Detector(Thresholds(slow_factor=5, slow_min_samples=3, slow_window_s=100))
    assert detector.execution("s1", "t1", 100.0, now=0.0) == []  # no history yet: nothing is slow
    detector = Detector(Thresholds(slow_factor=5, slow_min_samples=3, slow_window_s=100))
    for now in (0.0, 1.0, 2.0):
        assert detector.execution("s1", "t1", 1.0, now) == []
    assert detector.execution("s1", "t1", 5.0, 3.0) == []  # exactly 5 x the median is not above it
    found = detector.execution("s1", "t1", 5.01, 4.0)
    assert kinds(found) == [("slow_execution", "session", "s1"), ("slow_execution", "tenant", "t1")]
    assert found[0].threshold == 5.0
    assert detector.execution("s1", "t1", 60.0, 50.0) == []  # within the quiet time
    assert kinds(detector.execution("s1", "t1", 60.0, 104.0))[0] == ("slow_execution", "session", "s1")


def test_a_new_session_of_a_tenant_is_judged_by_the_tenant_history():
    detector = Detector(Thresholds(slow_factor=3, slow_min_samples=3))
    for now in range(3):
        detector.execution(f"s{now}", "t1", 2.0, float(now))
    assert kinds(detector.execution("fresh", "t1", 10.0, 10.0)) == [("slow_execution", "tenant", "t1")]


def test_a_forgotten_session_starts_over():
    detector = Detector(Thresholds(burst_calls=2, burst_window_s=10))
    detector.tool_call("s1", "t1", 0.0)
    detector.forget("s1")
    assert kinds(detector.tool_call("s1", "t2", 1.0)) == []
