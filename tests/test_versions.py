"""Versions of the host's container components and the known fixes they lack, as `/readyz` and `mcpx doctor` say."""

from __future__ import annotations

import subprocess
from typing import Any

import docker
import httpx
import pytest

from controller.cli import docker_checks
from controller.versions import components, missing_fixes, runc_missing_fixes, runsc_version
from tests.conftest import IMAGE

LACKS = "lacks the fix for CVE-2024-21626"


@pytest.mark.parametrize(
    ("version", "lacks"),
    [
        ("1.1.11", True),  # just under the upstream fix
        ("1.1.12", False),  # at it
        ("1.1.13", False),  # just over
        ("v1.1.12-0-g51d5e94", False),  # Docker CE's static runc names its tag
        ("1.2.0", False),
        ("1.0.0-rc93", True),
        ("1.1.5+ds1-1", True),  # Debian 12 before its security update
        ("1.1.5+ds1-1+deb12u1", False),  # Debian 12's security update carries the fix (DSA-5615-1)
        ("1.1.5+ds1-1+deb12u2", False),
        ("1.1.5+ds1-1+deb12u0", True),
    ],
)
def test_runc_below_1_1_12_lacks_the_leaky_vessels_fix_unless_a_distribution_patched_it(version: str, lacks: bool):
    found = runc_missing_fixes(version)
    assert (found == [f"runc {version} {LACKS} (fixed in 1.1.12; run `make host`)"]) if lacks else (found == [])


@pytest.mark.parametrize("version", ["", "51d5e946", "unknown"])
def test_a_runc_whose_version_cannot_be_read_is_reported_as_unverifiable(version: str):
    (problem,) = runc_missing_fixes(version)
    assert "cannot tell whether it has the fix for CVE-2024-21626" in problem


def test_versions_come_from_docker_info_and_runsc():
    info: dict[str, Any] = {"ServerVersion": "20.10.24+dfsg1", "RuncCommit": {"ID": "1.1.5+ds1-1"}}
    found = components(info, runsc_version("runsc version 0.0~20240729.0\nspec: 1.0.2-dev\n"))
    assert found == {"docker": "20.10.24+dfsg1", "runc": "1.1.5+ds1-1", "runsc": "0.0~20240729.0"}
    assert missing_fixes(found) == [f"runc 1.1.5+ds1-1 {LACKS} (fixed in 1.1.12; run `make host`)"]
    assert components({}, runsc_version("")) == {"docker": "", "runc": "", "runsc": ""}


def host_versions(docker_client: docker.DockerClient) -> dict[str, str]:
    info = docker_client.info()
    path = info["Runtimes"]["runsc"]["path"]
    runsc = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    return {"docker": info["ServerVersion"], "runc": info["RuncCommit"]["ID"], "runsc": runsc_version(runsc)}


def test_readyz_reports_the_hosts_component_versions_and_no_missing_fix(
    api: httpx.Client, docker_client: docker.DockerClient
):
    ready = api.get("/readyz").json()
    assert ready["versions"] == host_versions(docker_client)
    assert all(ready["versions"].values())
    assert ready["missing_fixes"] == []


def test_doctor_reports_the_hosts_component_versions(docker_client: docker.DockerClient):
    (check,) = [check for check in docker_checks(IMAGE) if check.name == "versions"]
    versions = host_versions(docker_client)
    assert check.ok
    assert check.detail == ", ".join(f"{name} {version}" for name, version in versions.items())
