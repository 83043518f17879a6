"""Tenants and their API keys: a bearer key maps to a tenant; every session belongs to the tenant that created it.

Keys are kept only as SHA-256 digests and compared in constant time against every known digest, so neither a
timing difference nor a memory dump of the controller gives a key away.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import ConfigError, UnknownServers
from controller.policy import Policy

if TYPE_CHECKING:
    from controller.catalog import CatalogSnapshot

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

    def servers_for(self, tenant: str, requested: frozenset[str] | None) -> frozenset[str] | None:
        """The servers a new session of the tenant gets: what it asked for, within the tenant's allowlist.

        Raises:
            UnknownServers: a requested server outside the tenant's allowlist.
        """
        allowed = self.config(tenant).servers
        if allowed is None:
            return requested
        if requested is not None and not requested <= set(allowed):
            raise UnknownServers(sorted(requested - set(allowed)))
        return frozenset(allowed) if requested is None else requested

    def policy_for(self, tenant: str, requested: Policy | None, server_wide: Policy) -> Policy:
        """The policy a new session of the tenant gets: never looser than the tenant's, nor the server's."""
        tenant_policy = (self.config(tenant).policy or server_wide).within(server_wide)
        return (requested or tenant_policy).within(tenant_policy)

    def view(self, tenant: str, snapshot: CatalogSnapshot) -> CatalogSnapshot:
        """The part of the catalog the tenant may see."""
        allowed = self.config(tenant).servers
        return snapshot.only(frozenset(allowed) if allowed is not None else None)
