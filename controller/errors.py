"""The exceptions mcpx raises. A failure of the agent's code is data (`ExecutionResult.error`), never one of these.

MCPXError
├── ConfigError                 settings or the mcpServers file are invalid
├── RuntimeUnavailable          the container engine cannot be reached or lacks the image
│   └── GVisorRequired          `require_gvisor` is set but Docker has no runsc runtime
├── SandboxError                a sandbox could not be started or is unusable
│   ├── HardeningViolation      a created container lacks a hardening flag; it was destroyed
│   └── SandboxStartTimeout     the sandbox did not connect to its bridge in time
├── BridgeError                 the session socket failed
│   ├── BridgeClosed            the sandbox side went away
│   └── BridgeTimeout           no reply within the deadline
├── SessionError
│   ├── SessionNotFound         unknown (or another tenant's) session id
│   ├── SessionLimitReached     the controller runs its maximum number of sessions
│   ├── ShuttingDown            the controller is draining: it starts no session
│   └── LanguageUnavailable     the sandbox image has no runtime for the execution's language
└── ReplicaError                another replica owns the session and cannot serve it from here
    ├── ReplicaUnavailable      the owner did not answer (gone, restarting, unreachable)
    └── ForwardingLoop          a forwarded request reached a replica that does not own its session
"""

from __future__ import annotations


class MCPXError(Exception):
    """Root of every mcpx exception."""


class ConfigError(MCPXError):
    """Invalid settings or server configuration."""


class ToolNotFound(MCPXError):
    """The catalog has no such tool."""

    def __init__(self, server: str, tool: str) -> None:
        super().__init__(f"no tool {tool!r} on server {server!r}")
        self.server, self.tool = server, tool


class RuntimeUnavailable(MCPXError):
    """The container engine is unreachable, or the sandbox image is missing."""


class GVisorRequired(RuntimeUnavailable):
    """gVisor is required by the settings but Docker does not have the `runsc` runtime registered."""


class SandboxError(MCPXError):
    """A sandbox failed to start or became unusable."""

    def __init__(self, message: str, *, session_id: str | None = None, logs: str = "") -> None:
        super().__init__(message)
        self.session_id = session_id
        self.logs = logs


class HardeningViolation(SandboxError):
    """The engine created a container without some hardening flag; the container was removed."""

    def __init__(self, violations: list[str], *, session_id: str | None = None) -> None:
        super().__init__("sandbox refused, hardening missing: " + "; ".join(violations), session_id=session_id)
        self.violations = violations


class SandboxStartTimeout(SandboxError):
    """The sandbox runtime did not connect to the session socket in time."""


class WorkspaceError(SandboxError):
    """Making, mounting or removing a session workspace failed."""


class BridgeError(MCPXError):
    """The session socket failed."""


class BridgeClosed(BridgeError):
    """The sandbox closed the connection or was never connected."""


class BridgeTimeout(BridgeError):
    """The sandbox did not answer a request within its deadline."""


class SessionError(MCPXError):
    """A session-level failure."""


class SessionNotFound(SessionError):
    """No session with this id exists (for this caller)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")
        self.session_id = session_id


class SessionLimitReached(SessionError):
    """The controller already runs `max_sessions` sessions."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the controller runs its maximum of {limit} sessions")
        self.limit = limit


class ShuttingDown(SessionError):
    """The controller is draining at shutdown and starts no new session."""


class LanguageUnavailable(SessionError):
    """The sandbox image has no runtime for the requested language (a Python-only image and TypeScript)."""

    def __init__(self, language: str, reason: str) -> None:
        super().__init__(f"cannot run {language}: {reason}")
        self.language = language


class UnknownServers(SessionError):
    """A session asked for servers that are not configured."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"unknown servers: {', '.join(names)}")
        self.names = names


class ReplicaError(MCPXError):
    """A request for a session of another replica could not be served through that replica."""

    def __init__(self, message: str, *, replica: str, session_id: str) -> None:
        super().__init__(message)
        self.replica, self.session_id = replica, session_id


class ReplicaUnavailable(ReplicaError):
    """The replica owning the session did not answer; its sessions are unusable until it is back."""


class ForwardingLoop(ReplicaError):
    """A request already forwarded once reached a replica that does not own its session (peers misconfigured)."""
