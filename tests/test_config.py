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
        ({"tools": {}}, '"mcpServers"'),
    ],
)
def test_invalid_server_configs_name_the_server_and_field(document: object, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        parse_servers(document, {})


def test_a_default_is_used_when_its_variable_is_unset_or_empty_and_the_value_otherwise():
    entry = {"command": "run", "args": ["${A:-fallback}", "${B:-fallback}", "${C:-}", "x${A:-y}z"]}
    servers = parse_servers({"mcpServers": {"a": entry}}, {"B": "", "C": "set"})
    assert servers["a"].args == ("fallback", "fallback", "set", "xyz")  # type: ignore[union-attr]
    servers = parse_servers({"mcpServers": {"a": entry}}, {"A": "given", "B": "b"})
    assert servers["a"].args == ("given", "b", "", "xgivenz")  # type: ignore[union-attr]


def test_the_vs_code_and_cursor_form_env_colon_var_is_expanded():
    servers = parse_servers(
        {"mcpServers": {"a": {"url": "https://x/mcp", "headers": {"Authorization": "Bearer ${env:TOKEN}"}}}},
        {"TOKEN": "t0ken"},
    )
    assert servers["a"].headers == {"Authorization": "Bearer t0ken"}  # type: ignore[union-attr]


def test_expanded_values_are_never_expanded_again_and_a_bare_dollar_is_text():
    servers = parse_servers({"mcpServers": {"a": {"command": "${A}", "args": ["$A", "a$b", "$"]}}}, {"A": "${B}"})
    assert (servers["a"].command, servers["a"].args) == ("${B}", ("$A", "a$b", "$"))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "written",
    ["${A:-${B}}", "${input:token}", "${A", "x ${ A }", "${}", "${A-default}", "${A:=x}", "${1A}", "${user Home}"],
)
def test_a_reference_of_no_supported_form_is_refused_never_kept_as_text(written: str):
    with pytest.raises(ConfigError, match=r"server 'a'.env.K: .* is not a supported reference: write \$\{VAR\}"):
        parse_servers({"mcpServers": {"a": {"command": "x", "env": {"K": written}}}}, {"A": "1", "B": "2"})


def test_an_unset_variable_without_default_is_named_with_where_it_is_used():
    with pytest.raises(ConfigError, match=r"server 'gh'.headers.Authorization: environment variable GH_TOKEN is not"):
        parse_servers({"mcpServers": {"gh": {"url": "https://x", "headers": {"Authorization": "${GH_TOKEN}"}}}}, {})


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"type": "stdio", "command": "run"}, "stdio"),
        ({"type": "http", "url": "https://x/mcp"}, "http"),
        ({"type": "streamable-http", "url": "https://x/mcp"}, "streamable-http"),
    ],
)
def test_the_type_mcp_clients_write_is_accepted_beside_its_shape(entry: dict[str, str], kind: str):
    for document in ({"mcpServers": {"a": entry}}, {"servers": {"a": entry}}):  # the second: VS Code's layout
        assert parse_servers(document, {})["a"].type == kind


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "stdio", "url": "https://x/mcp"}, "type 'stdio' needs `command`, not `url`"),
        ({"type": "stdio", "command": "x", "url": "https://x"}, "type 'stdio' needs `command`, not `url`"),
        ({"type": "http", "command": "run"}, "type 'http' needs `url`, not `command`"),
        ({"type": "streamable-http"}, "type 'streamable-http' needs `url`"),
        ({"type": "sse", "url": "https://x/sse"}, 'type \'sse\' .* is not supported: .* "type": "http"'),
        ({"type": "websocket", "url": "wss://x"}, "unknown type 'websocket': expected one of 'stdio', 'http'"),
        ({"type": 7, "command": "x"}, "unknown type 7"),
    ],
)
def test_a_type_that_does_not_fit_its_entry_is_refused_naming_the_server(entry: dict[str, object], message: str):
    with pytest.raises(ConfigError, match=f"invalid server config: server 'a': {message}"):
        parse_servers({"mcpServers": {"a": entry}}, {})


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
