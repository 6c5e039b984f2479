"""Configuration files: what a valid file means, and the one-line error a bad one gets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config.files import load_agents, load_gateway_config
from gateway.errors import ConfigError
from gateway.upstream.manifests import load_manifest, load_manifests
from tests.support.harness import write_config


def config_at(tmp_path: Path, manifests: list[dict], **extra: object):
    return load_gateway_config(write_config(tmp_path, 8765, manifests=manifests, extra=dict(extra)))


def manifest(**fields: object) -> dict:
    return {
        "name": "time",
        "owner": "o@example.com",
        "transport": "stdio",
        "command": "python",
        "args": ["-m", "mcp_server_time"],
        "tools": ["get_current_time"],
        **fields,
    }


def test_a_manifest_becomes_a_resolved_upstream_spec(tmp_path: Path) -> None:
    config = config_at(tmp_path, [manifest(env={"TZ": "UTC"}, isolation="per_session", timeout="5s")])
    spec = load_manifests(config)["time"]
    assert spec.command == sys.executable  # "python" is the gateway's own interpreter
    assert spec.args == ("-m", "mcp_server_time")
    assert spec.tools == frozenset({"get_current_time"}) and spec.exposes("get_current_time")
    assert not spec.exposes("convert_time")
    assert spec.isolation == "per_session" and spec.timeout == 5.0
    own = config.work_dir / "time"  # the server's own directory, outside the state dir
    assert spec.cwd == own and config.state_dir not in own.parents
    assert spec.env == {"HOME": str(own), "TMPDIR": str(own / "tmp"), "TZ": "UTC"}


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"colour": "red"}, "colour", "unknown field"),
        ({"command": None}, "(top level)", "stdio manifest needs a command"),
        ({"name": "Time!"}, "name", "must match"),
        ({"isolation": "sometimes"}, "isolation", "'shared' or 'per_session'"),
        ({"pins": {"get_current_time": "md5:abc"}}, "pins", "sha256"),
        ({"transport": "http", "command": None, "args": [], "url": "ftp://x"}, "(top level)", "http(s) URL"),
        ({"sandbox": {"read": ["/srv"], "exec": ["/x"]}}, "sandbox.exec", "unknown field"),
        ({"sandbox": "sometimes"}, "sandbox", "must be off, or a mapping of read and write path lists"),
        (
            {"transport": "http", "command": None, "args": [], "url": "http://127.0.0.1:1/mcp", "sandbox": "off"},
            "(top level)",
            "sandbox is for stdio manifests",
        ),
    ],
)
def test_a_bad_manifest_is_refused_naming_file_field_and_reason(
    tmp_path: Path, fields: dict, field: str, reason: str
) -> None:
    config = config_at(tmp_path, [manifest(**fields)])
    with pytest.raises(ConfigError) as raised:
        load_manifests(config)
    message = str(raised.value)
    assert "\n" not in message
    written = fields.get("name", "time")
    assert message.startswith(f"{tmp_path / 'manifests' / written}.yaml: "), message
    assert field in message and reason in message, message


def test_manifest_name_must_match_its_file(tmp_path: Path) -> None:
    config = config_at(tmp_path, [manifest()])
    (tmp_path / "manifests" / "time.yaml").rename(tmp_path / "manifests" / "clock.yaml")
    with pytest.raises(ConfigError, match="clock.yaml: name: 'time' must match the file name 'clock'"):
        load_manifests(config)


def test_secrets_come_only_from_the_servers_own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    http = {
        "name": "api",
        "owner": "o@example.com",
        "transport": "http",
        "url": "http://127.0.0.1:9/mcp",
        "headers": {"Authorization": "Bearer ${secret:TOKEN}"},
        "tools": "*",
    }
    config = config_at(tmp_path, [http])
    (tmp_path / "secrets" / "api").mkdir(parents=True)
    (tmp_path / "secrets" / "api" / "TOKEN").write_text("from-file\n")
    assert load_manifests(config)["api"].headers == {"Authorization": "Bearer from-file"}

    (tmp_path / "secrets" / "api" / "TOKEN").unlink()
    monkeypatch.setenv("GATEWAY_SECRET_API_TOKEN", "from-env")
    assert load_manifests(config)["api"].headers == {"Authorization": "Bearer from-env"}

    monkeypatch.delenv("GATEWAY_SECRET_API_TOKEN")
    monkeypatch.setenv("TOKEN", "a gateway variable")  # never consulted
    monkeypatch.setenv("GATEWAY_SECRET_OTHER_TOKEN", "another server's secret")
    with pytest.raises(ConfigError, match=r"headers.Authorization: \$\{secret:TOKEN\} not found"):
        load_manifests(config)


def test_http_upstreams_must_be_on_an_allowed_host(tmp_path: Path) -> None:
    http = {"name": "api", "owner": "o@example.com", "transport": "http", "url": "http://10.0.0.8:80/mcp", "tools": "*"}
    with pytest.raises(ConfigError, match="url: host '10.0.0.8' is not in upstream_hosts"):
        load_manifests(config_at(tmp_path, [http]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"public_url": "http://gateway.example.com"}, "public_url: plain http is allowed only for loopback"),
        ({"public_url": "http://127.0.0.1:8765/"}, "public_url: must be canonical"),
        ({"surprise": 1}, "surprise: unknown field"),
        ({"session_defaults": {"ttl": "soon"}}, "session_defaults.ttl:"),
        ({"admin_token": "${env:NO_SUCH_VARIABLE_HERE}"}, "${env:NO_SUCH_VARIABLE_HERE} is not set"),
        *(
            ({"http": {"trusted_proxies": [entry]}}, f"http.trusted_proxies: {entry!r} is not an IP address")
            for entry in ["localhost", "10.0.0.300", "10.0.0.0/33", "10.0.0.5/24", ""]
        ),
    ],
)
def test_a_bad_gateway_yaml_stops_startup_with_one_line(tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_at(tmp_path, [manifest()], **extra)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_relative_paths_resolve_against_the_file_that_names_them(tmp_path: Path) -> None:
    config = config_at(tmp_path, [manifest()])
    assert config.state_dir == tmp_path / "state"
    assert config.sqlite_path == tmp_path / "state" / "gateway.db"
    assert config.manifests == tmp_path / "manifests"


def test_agents_yaml_rejects_unknown_fields_and_bad_rules(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    cases = {
        "agents.bot.grant.toolz: unknown field": {"bot": {"owner": "a@example.com", "grant": {"toolz": []}}},
        "pattern requires max_length": {
            "bot": {
                "owner": "a@example.com",
                "grant": {"tools": ["x.y"], "arguments": {"x.y": {"a": {"pattern": "[a-z]+"}}}},
            }
        },
        "must be server.tool": {"bot": {"owner": "a@example.com", "grant": {"tools": ["time"]}}},
        "owner: must be an email": {"bot": {"owner": "alice"}},
    }
    for message, agents in cases.items():
        path.write_text(yaml.safe_dump({"agents": agents}))
        with pytest.raises(ConfigError) as raised:
            load_agents(path)
        assert message in str(raised.value), raised.value


def test_manifests_validate_reports_each_bad_file_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, 8765, manifests=[manifest(), manifest(name="git", colour="red")])
    status = main(["manifests", "validate", "--config", str(tmp_path / "gateway.yaml")])
    out, err = capsys.readouterr()
    assert status == 1
    assert "ok: time.yaml" in out
    assert "git.yaml: colour: unknown field" in err
    assert err.strip().splitlines()[-1] == "mcp-gateway: error: 1 of 2 manifest(s) invalid"


def test_manifests_validate_on_a_fresh_config_creates_the_state_dir_only_its_owner_can_enter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, 8765, manifests=[manifest()])  # the quickstart runs validate before anything else
    state = tmp_path / "state"
    assert not state.exists()
    assert main(["manifests", "validate", "--config", str(tmp_path / "gateway.yaml")]) == 0
    assert "ok: time.yaml" in capsys.readouterr().out
    created = [state, *(p for p in state.rglob("*") if p.is_dir())]
    assert state / "logs" in created
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in created} == {p.name: "0o700" for p in created}


def test_a_work_dir_overlapping_the_gateways_files_is_refused(tmp_path: Path) -> None:
    for work_dir in ("./state/servers", ".", "./secrets"):
        with pytest.raises(ConfigError, match=r"gateway.yaml: work_dir: .* overlaps (state_dir|secrets_dir)"):
            config_at(tmp_path, [manifest()], work_dir=work_dir)


def test_cli_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["sessions", "open", "--agent", "x", "--ttl", "forever"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--ttl" in err


def test_load_manifest_reports_yaml_syntax_errors_with_the_line(tmp_path: Path) -> None:
    config = config_at(tmp_path, [manifest()])
    bad = tmp_path / "manifests" / "time.yaml"
    bad.write_text("name: time\nargs: [unclosed\n")
    with pytest.raises(ConfigError, match=r"time.yaml: not valid YAML \(line \d+\)"):
        load_manifest(bad, config)
