"""The adversarial suite's fixtures: every attack is followed by a check that another live session is still served."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SessionFactory, execute

Attack = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def witness(server: Any) -> Iterator[str]:
    """A session that lives through a whole module of attacks; it must keep answering after each one."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.post("/v1/sessions", json={"runtime": "runc"})
        assert response.status_code == 201, response.text
        session_id = str(response.json()["id"])
        execute(client, session_id, "witness_state = 41")
        yield session_id
        client.delete(f"/v1/sessions/{session_id}")


@pytest.fixture(autouse=True)
def controller_still_serves(api: httpx.Client, witness: str) -> Iterator[None]:
    """After every attack: the controller is healthy and another session still runs code with its state intact."""
    yield
    assert api.get("/healthz").status_code == 200
    assert execute(api, witness, "witness_state + 1")["result"] == 42


@pytest.fixture
def attack(api: httpx.Client, new_session: SessionFactory, runtime: str) -> Attack:
    """Run hostile code in a fresh session of the parametrized runtime; returns the execution's response."""

    def run(code: str, **session: Any) -> dict[str, Any]:
        session_id = new_session(runtime=runtime, **session)
        return execute(api, session_id, code)

    return run


def result_of(reply: dict[str, Any]) -> Any:
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def expect_failure_under(request: pytest.FixtureRequest, runtime: str, runtimes: set[str], reason: str) -> None:
    """Mark this run as a known, undecided containment gap: strict, so a fix shows up as XPASS(strict)."""
    if runtime in runtimes:
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))
