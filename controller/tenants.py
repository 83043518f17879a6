"""Tenants and their API keys: a bearer key maps to a tenant; every session belongs to the tenant that created it.

Keys are kept only as SHA-256 digests and compared in constant time against every known digest, so neither a
timing difference nor a memory dump of the controller gives a key away.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import ConfigError
from controller.policy import Policy

DEFAULT_TENANT = "default"


class TenantConfig(BaseModel):
    """What one tenant may use, within the server-wide settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[str] | None = Field(default=None, description="MCP servers its sessions may use; default: all.")
    policy: Policy | None = Field(default=None, description="Its sessions' policy, within the server-wide one.")
    max_sessions: int | None = Field(default=None, ge=0, description="Sessions it may run at once.")


def parse_keys(pairs: Iterable[str], where: str) -> list[tuple[str, str]]:
    """`tenant:key` entries (blank ones and `#` comments skipped). Raises: ConfigError naming the bad entry."""
    keys = []
    for number, raw in enumerate(pairs, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        tenant, separator, key = entry.partition(":")
        if not separator or not tenant.strip() or len(key.strip()) < 16:
            raise ConfigError(f"{where}, entry {number}: expected tenant:key with a key of at least 16 characters")
        keys.append((tenant.strip(), key.strip()))
    return keys


def load_keys(inline: str | None, file: Path | None) -> list[tuple[str, str]]:
    """Keys from `MCPX_API_KEYS` (comma-separated) and the keys file (one per line). Raises: ConfigError."""
    keys = parse_keys(inline.split(","), "MCPX_API_KEYS") if inline else []
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API keys file {file}: {exc.strerror}") from exc
        keys += parse_keys(lines, str(file))
    return keys


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Tenants:
    """Authenticates bearer keys; without keys, everything belongs to the default tenant."""

    def __init__(self, keys: Iterable[tuple[str, str]], configs: Mapping[str, TenantConfig]) -> None:
        self._digests = [(digest(key), tenant) for tenant, key in keys]
        self.configs = dict(configs)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, key: str | None) -> str | None:
        """The tenant of `key`, or None when it is missing or unknown (always the default tenant without keys)."""
        if not self.enabled:
            return DEFAULT_TENANT
        if not key:
            return None
        presented = digest(key)
        found = None
        for known, tenant in self._digests:
            if hmac.compare_digest(presented, known):  # no early exit: every digest is compared
                found = tenant
        return found

    def config(self, tenant: str) -> TenantConfig:
        return self.configs.get(tenant, TenantConfig())
