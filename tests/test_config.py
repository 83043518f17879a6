"""Settings and the mcpServers file: validation, `${VAR}` expansion, and the README's reference table."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import Settings, parse_servers, reference
from controller.errors import ConfigError
from controller.tenants import Tenants, load_keys


def test_the_readme_holds_the_generated_configuration_reference():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert reference() in readme


def test_variables_are_expanded_from_the_environment_only_where_written():
    servers = parse_servers(
        {"mcpServers": {"a": {"command": "run", "env": {"TOKEN": "${SECRET}"}}, "b": {"url": "https://x/${HOST}"}}},
        {"SECRET": "s3cret", "HOST": "mcp"},
    )
    assert servers["a"].env == {"TOKEN": "s3cret"}  # type: ignore[union-attr]
    assert servers["b"].url == "https://x/mcp"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"mcpServers": {"a": {"command": "x", "args": "not-a-list"}}}, "server 'a' field 'args'"),
        ({"mcpServers": {"a": {"nothing": 1}}}, "server 'a': needs `command` or `url`"),
        ({"mcpServers": {"a": {"url": "ftp://x"}}}, "server 'a' field 'url'"),
        ({"mcpServers": {"a": {"command": "${MISSING}"}}}, "MISSING is not set"),
        ({"servers": {}}, '"mcpServers"'),
    ],
)
def test_invalid_server_configs_name_the_server_and_field(document: object, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        parse_servers(document, {})


def test_keys_are_checked_and_never_shown(tmp_path: Path):
    with pytest.raises(ConfigError, match="at least 16"):
        load_keys("team:short", None)
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nteam-b:bbbbbbbbbbbbbbbbbbbb\n")
    tenants = Tenants(load_keys("team-a:aaaaaaaaaaaaaaaaaaaa", keys_file), {})
    assert tenants.authenticate("aaaaaaaaaaaaaaaaaaaa") == "team-a"
    assert tenants.authenticate("bbbbbbbbbbbbbbbbbbbb") == "team-b"
    assert tenants.authenticate("cccccccccccccccccccc") is None
    assert tenants.authenticate(None) is None
    assert "aaaaaaaaaaaaaaaaaaaa" not in repr(Settings(api_keys="team-a:aaaaaaaaaaaaaaaaaaaa"))
