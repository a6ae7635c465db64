from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from shared.config import (
    ConfigError,
    Settings,
    SmtpTarget,
    load_settings,
    parse_smtp_url,
    variable_name,
)

BIN = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parent.parent
CONFIGURATION_PAGE = REPOSITORY / "docs" / "configuration.md"


def test_required_variable_missing_names_it() -> None:
    with pytest.raises(ConfigError, match="^MAILROOM_DATABASE_URL is not set$"):
        load_settings(require=["database_url"], environ={})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILROOM_DATABASE_URL", "mysql://localhost/x"),
        ("MAILROOM_BROKER_URL", "http://localhost"),
        ("MAILROOM_SMTP_URL", "localhost:25"),
        ("MAILROOM_SMTP_URL", "smtp://host:notaport"),
        ("MAILROOM_MESSAGE_ID_DOMAIN", "no spaces@allowed"),
        ("MAILROOM_RELAY_BATCH_SIZE", "0"),
        ("MAILROOM_RELAY_POLL_INTERVAL", "soon"),
    ],
)
def test_malformed_variable_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} is malformed: "):
        load_settings(environ={variable: value})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.test:2525", SmtpTarget("mail.test", 2525, "plain")),
        ("smtp://mail.test", SmtpTarget("mail.test", 25, "plain")),
        (
            "smtp://u:p%40ss@mail.test:587?starttls=1",
            SmtpTarget("mail.test", 587, "starttls", "u", "p@ss"),
        ),
        ("smtps://mail.test", SmtpTarget("mail.test", 465, "tls")),
    ],
)
def test_smtp_url_forms(url: str, expected: SmtpTarget) -> None:
    parsed = parse_smtp_url(url)
    assert parsed == expected
    assert parsed.password == expected.password


def test_values_are_parsed() -> None:
    settings = load_settings(
        environ={
            "MAILROOM_DATABASE_URL": "postgresql://u@h/db",
            "MAILROOM_RELAY_BATCH_SIZE": "50",
            "MAILROOM_MESSAGE_ID_DOMAIN": "Mail.Example.COM",
        }
    )
    assert settings.relay_batch_size == 50
    assert settings.message_id_domain == "mail.example.com"
    assert settings.relay_visibility_timeout == 60.0


def test_webhook_allow_networks_are_cidrs_and_empty_by_default() -> None:
    assert load_settings(environ={}).webhook_allow_networks == ()
    env = {"MAILROOM_WEBHOOK_ALLOW_NETWORKS": " 10.1.0.0/16, ::1/128,192.168.1.7 ,"}
    assert load_settings(environ=env).webhook_allow_networks == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.7/32"),
    )


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "10.0.0.0/8;::1"])
def test_a_malformed_webhook_allow_network_is_named(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"MAILROOM_WEBHOOK_ALLOW_NETWORKS": value})
    message = str(raised.value)
    assert message.startswith("MAILROOM_WEBHOOK_ALLOW_NETWORKS is malformed: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        (["outbox-relay", "run"], "MAILROOM_DATABASE_URL"),
        (["ingest-api", "create-key", "x"], "MAILROOM_DATABASE_URL"),
        (["mail-worker", "run"], "MAILROOM_DATABASE_URL"),
    ],
)
def test_processes_stop_at_start_with_one_line(command: list[str], variable: str) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]


def test_malformed_smtp_url_stops_the_worker() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MAILROOM_DATABASE_URL": "postgresql://u@127.0.0.1/db",
        "MAILROOM_BROKER_URL": "redis://127.0.0.1:6379/0",
        "MAILROOM_SMTP_URL": "mail.example.com",
        "MAILROOM_MESSAGE_ID_DOMAIN": "mail.test",
    }
    result = subprocess.run(
        [str(BIN / "mail-worker"), "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mail-worker: configuration error: MAILROOM_SMTP_URL is malformed: "
        "expected smtp://[user:pass@]host:port, smtps://… or ?starttls=1"
    ]


def test_blank_values_count_as_unset() -> None:
    settings = load_settings(environ={"MAILROOM_RELAY_BATCH_SIZE": "  ", "MAILROOM_LOG_LEVEL": ""})
    assert (settings.relay_batch_size, settings.log_level) == (200, "INFO")
    with pytest.raises(ConfigError, match="^MAILROOM_DATABASE_URL is not set$"):
        load_settings(require=["database_url"], environ={"MAILROOM_DATABASE_URL": " "})


def test_the_first_problem_in_field_order_is_named() -> None:
    environ = {"MAILROOM_SMTP_URL": "mail.example.com", "MAILROOM_RELAY_BATCH_SIZE": "0"}
    with pytest.raises(ConfigError, match="^MAILROOM_DATABASE_URL is not set$"):
        load_settings(require=["database_url"], environ=environ)
    # smtp comes before message_id_domain in Settings
    with pytest.raises(ConfigError, match="^MAILROOM_SMTP_URL is malformed: expected smtp://"):
        load_settings(require=["message_id_domain"], environ=environ)


def test_a_given_environment_is_the_only_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROOM_RELAY_BATCH_SIZE", "7")
    assert load_settings(environ={}).relay_batch_size == 200
    assert load_settings().relay_batch_size == 7


def test_building_settings_reads_no_environment_but_checks_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILROOM_RELAY_BATCH_SIZE", "7")
    monkeypatch.setenv("MAILROOM_DATABASE_URL", "postgresql://u@h/from-environment")
    settings = Settings(database_url="postgresql://u@h/db", message_id_domain="Mail.TEST")
    assert (settings.relay_batch_size, settings.database_url) == (200, "postgresql://u@h/db")
    assert settings.message_id_domain == "mail.test"
    # replace() passes every field again, the unset ("") ones included.
    assert dataclasses.replace(settings, relay_batch_size=5).relay_batch_size == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.relay_batch_size = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        dataclasses.replace(settings, relay_batch_size=0)


def _documented_defaults() -> dict[str, str]:
    """Variable name -> the default column of docs/configuration.md's table."""
    rows = re.findall(r"^\| `([A-Z_]+)` \|[^|]*\|([^|]*)\|", CONFIGURATION_PAGE.read_text(), re.M)
    return {variable: default.strip() for variable, default in rows}


def test_documented_variables_match_settings() -> None:
    documented = _documented_defaults()
    fields = {variable_name(field.name): field for field in dataclasses.fields(Settings)}
    assert sorted(documented) == sorted(fields)
    checked = 0
    for variable, stated in documented.items():
        default = fields[variable].default
        if re.fullmatch(r"[0-9.]+", stated):
            assert float(stated) == default, variable
        elif stated == "empty":
            assert not default, variable
        elif re.fullmatch(r"`[^`]+`", stated):
            assert stated.strip("`") == default, variable
        else:  # "required", "system CAs", "unset: no rate limit", ...
            continue
        checked += 1
    assert checked >= 25  # the table is read, not skipped


def _gunicorn_conf(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import ingest_api.gunicorn_conf as conf; print(conf.threads)"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_gunicorn_threads_come_from_the_loader() -> None:
    assert _gunicorn_conf({}).stdout.strip() == "8"
    assert _gunicorn_conf({"MAILROOM_API_THREADS": " "}).stdout.strip() == "8"  # blank: unset
    assert _gunicorn_conf({"MAILROOM_API_THREADS": "3"}).stdout.strip() == "3"
    refused = _gunicorn_conf({"MAILROOM_API_THREADS": "many"})
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "ingest-api: configuration error: MAILROOM_API_THREADS is malformed: "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
