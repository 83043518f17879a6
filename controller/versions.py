"""The host's container components (Docker, runc, runsc): their versions, and the known security fixes they lack.

Pure: `docker info` and `runsc --version` go in, text comes out; `mcpx doctor` and `/readyz` report the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

# CVE-2024-21626 ("Leaky Vessels": a file descriptor of the host leaked into the container's process, enough to
# escape under runc) is fixed upstream in runc 1.1.12.
RUNC_FIXED_IN: Final = (1, 1, 12)
RUNC_CVE: Final = "CVE-2024-21626"
# Distribution builds of an older upstream version that carry the fix as a patch (their changelogs name the CVE):
# Debian 12's security update 1.1.5+ds1-1+deb12u1 (DSA-5615-1) and every later revision of it.
RUNC_PATCHED: Final = re.compile(r"^1\.1\.5\+ds1-1\+deb12u[1-9][0-9]*$")
UPSTREAM: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def runc_missing_fixes(version: str) -> list[str]:
    """The known fixes a runc build lacks; one whose version cannot be read is reported as unverifiable."""
    if RUNC_PATCHED.match(version):
        return []
    found = UPSTREAM.search(version)
    if found is None:
        return [f"runc {version or '(unknown)'}: cannot tell whether it has the fix for {RUNC_CVE}"]
    if tuple(int(part) for part in found.groups()) < RUNC_FIXED_IN:
        fixed = ".".join(map(str, RUNC_FIXED_IN))
        return [f"runc {version} lacks the fix for {RUNC_CVE} (fixed in {fixed}; run `make host`)"]
    return []


def runsc_version(output: str) -> str:
    """The release in `runsc --version` output ("runsc version 0.0~20240729.0" -> "0.0~20240729.0")."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    return first.removeprefix("runsc version").strip()


def components(info: Mapping[str, Any], runsc: str) -> dict[str, str]:
    """Docker's, runc's and runsc's versions, from `docker info` and `runsc --version` ("" where unknown)."""
    runc: Mapping[str, Any] = info.get("RuncCommit") or {}
    return {"docker": str(info.get("ServerVersion") or ""), "runc": str(runc.get("ID") or ""), "runsc": runsc}


def missing_fixes(versions: Mapping[str, str]) -> list[str]:
    """Every known fix the components lack (runc's only, for now: gVisor's updates come with its release)."""
    return runc_missing_fixes(versions.get("runc", ""))
