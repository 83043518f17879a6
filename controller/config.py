"""Settings: one object, built in `main()` or by a test, passed down. Environment variables use the MCPX_ prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseModel):
    """Resource limits of one session; a request may ask for others up to the `max_*` settings."""

    model_config = ConfigDict(frozen=True)

    timeout_s: float = 30.0
    """Default time limit of one execution, in seconds."""
    memory_mb: int = 512
    """Memory of the sandbox (no swap), in MiB."""
    cpus: float = 1.0
    """CPU quota of the sandbox, in cores."""
    ttl_s: float = 900.0
    """Idle time after which a session is deleted, in seconds."""


class Settings(BaseSettings):
    """Every setting of the controller; defaults run on one laptop."""

    model_config = SettingsConfigDict(env_prefix="MCPX_", env_nested_delimiter="__", frozen=True)

    host: str = "127.0.0.1"
    """Address the HTTP API binds to."""
    port: int = 8080
    """Port of the HTTP API."""
    controller_id: str = Field(default="mcpx", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    """Name written into every sandbox's `mcpx.controller` label; containers with it are this controller's."""
    state_dir: Path = Path("/var/lib/mcpx")
    """Where session sockets and workspaces live on the host."""
    image: str = "mcpx-sandbox:latest"
    """The sandbox image."""
    docker_host: str | None = None
    """Docker endpoint (e.g. unix:///var/run/docker.sock); default from the Docker environment."""
    require_gvisor: bool = False
    """Refuse to start sessions unless Docker has the `runsc` runtime."""
    runtime: str | None = None
    """Force a container runtime (`runsc` or `runc`); default: runsc when registered, else runc."""
    defaults: Limits = Limits()
    """Limits of a session that does not ask for others."""
    max_timeout_s: float = 600.0
    """Largest execution time limit a request may ask for."""
    max_memory_mb: int = 8192
    """Largest sandbox memory a request may ask for."""
    max_cpus: float = 4.0
    """Largest CPU quota a request may ask for."""
    max_ttl_s: float = 86400.0
    """Largest idle TTL a request may ask for."""
    max_sessions: int = 64
    """Sessions this controller runs at once."""
    max_code_bytes: int = 1024 * 1024
    """Largest code a request may submit."""
    max_frame_bytes: int = 16 * 1024 * 1024
    """Largest single message on a session socket."""
    max_output_bytes: int = 4 * 1024 * 1024
    """Captured stdout (and stderr) per execution; more is dropped with a marker."""
    kill_grace_s: float = 1.0
    """After a timeout's interrupt, how long the code may take to stop before its interpreter is killed."""
    start_timeout_s: float = 30.0
    """How long a new sandbox may take to connect to its socket."""
    pids_limit: int = 256
    """Processes in a sandbox (a cgroup limit under runc, an nproc limit inside gVisor)."""
    tmp_size_mb: int = 64
    """Size of the sandbox's /tmp (tmpfs, counted against its memory)."""
    workspace_size_mb: int = 1024
    """Size cap of a session's workspace (a loop-mounted ext4 file when the host allows, else unenforced)."""
    reap_interval_s: float = 5.0
    """How often idle sessions are looked for."""
