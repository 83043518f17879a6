"""Demo MCP server: deployments that progress each time they are polled, the workload of "poll until done".

    python -m controller.demo.deploys                                    # stdio
    python -m controller.demo.deploys --transport streamable-http --port 8933

A deployment moves through queued, building, pushing, rolling out and healthy; every `get_deployment` call advances
it a step and returns its whole status with the build log so far, as real deployment APIs do, so an agent polling it
by direct tool calls reads the growing log again and again.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from controller.demo import parse_args, serve

Phase = Literal["queued", "building", "pushing", "rolling_out", "healthy"]
PHASES: tuple[Phase, ...] = ("queued", "building", "pushing", "rolling_out", "healthy")
POLLS_PER_PHASE = 3
INSTRUCTIONS = (
    "Brightwave's deployment service: start a deployment of a service version with start_deployment, then follow "
    "it with get_deployment until its phase is 'healthy'. Each status carries the build log so far."
)


class Deployment(BaseModel):
    id: str
    service: str
    version: str
    phase: Phase = Field(description="queued, building, pushing, rolling_out, then healthy.")
    progress: int = Field(ge=0, le=100, description="Percent done.")
    polls: int = Field(description="How many times the status has been read.")
    log: list[str] = Field(description="Build and rollout log lines so far, oldest first.")


@dataclass
class Tracker:
    """Deployments in memory; the random source is seeded, so runs repeat."""

    rng: random.Random = field(default_factory=lambda: random.Random(7))  # noqa: S311 - demo data, not secrets
    deployments: dict[str, Deployment] = field(default_factory=dict)

    def start(self, service: str, version: str) -> Deployment:
        deployment = Deployment(
            id=f"DEP-{len(self.deployments) + 1:04d}", service=service, version=version, phase="queued", progress=0,
            polls=0, log=[f"queued {service}@{version}"],
        )  # fmt: skip
        self.deployments[deployment.id] = deployment
        return deployment

    def poll(self, deployment_id: str) -> Deployment:
        deployment = self.deployments.get(deployment_id)
        if deployment is None:
            raise ToolError(f"Unknown deployment id {deployment_id!r}; start_deployment returns the id to poll.")
        if deployment.phase != "healthy":
            deployment.polls += 1
            phase = PHASES[min(deployment.polls // POLLS_PER_PHASE, len(PHASES) - 1)]
            deployment.phase = phase
            deployment.progress = min(100, deployment.polls * 100 // (POLLS_PER_PHASE * (len(PHASES) - 1)))
            deployment.log.extend(self._lines(deployment, phase))
        return deployment.model_copy(deep=True)

    def _lines(self, deployment: Deployment, phase: Phase) -> list[str]:
        step = deployment.polls
        layers = [f"[{phase}] step {step}: layer sha256:{self.rng.getrandbits(64):016x} done in "
                  f"{self.rng.uniform(0.2, 9.5):.1f}s" for _ in range(12)]  # fmt: skip
        return [*layers, f"[{phase}] {deployment.service}@{deployment.version}: {deployment.progress}% complete"]


def create_server(tracker: Tracker) -> MCPServer:
    server = MCPServer("deploys", instructions=INSTRUCTIONS)

    async def start_deployment(
        service: str = Field(description="The service to deploy, e.g. 'billing-api'."),
        version: str = Field(description="The version tag to roll out, e.g. 'v2.14.0'."),
    ) -> Deployment:
        """Start deploying a version of a service; returns the new deployment (poll it with get_deployment)."""
        return tracker.start(service, version)

    async def get_deployment(deployment_id: str = Field(description="The id start_deployment returned.")) -> Deployment:
        """Return a deployment's current status and its whole log so far; poll until `phase` is 'healthy'."""
        return tracker.poll(deployment_id)

    server.add_tool(start_deployment, annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    server.add_tool(get_deployment, annotations=ToolAnnotations(read_only_hint=True))
    return server


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on stdio or streamable HTTP until the client or a signal ends it."""
    args = parse_args("python -m controller.demo.deploys", INSTRUCTIONS, argv)
    server = create_server(Tracker())
    print(f"deploys: serving on {args.transport}", file=sys.stderr, flush=True)
    serve(server, args)


if __name__ == "__main__":
    main()
