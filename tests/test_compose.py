"""compose.yaml and the Dockerfile, checked as data (no Docker needed)."""

from __future__ import annotations

import configparser
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APPS = ("migrate", "api", "relay", "worker")
SERVICES = ("postgres", "redis", "mailpit", *APPS)
IMAGE = "mailroom:local"
MAILROOM_ENV = {
    "MAILROOM_DATABASE_URL": "postgresql://mailroom:mailroom@postgres:5432/mailroom",
    "MAILROOM_BROKER_URL": "redis://redis:6379/0",
    "MAILROOM_SMTP_URL": "smtp://mailpit:1025",
    "MAILROOM_MESSAGE_ID_DOMAIN": "mail.example.test",
    "MAILROOM_PUBLIC_URL": "http://localhost:8000",
    "MAILROOM_UNSUBSCRIBE_SECRET": (
        "${MAILROOM_UNSUBSCRIBE_SECRET:-change-me-demo-unsubscribe-secret}"
    ),
}
# The conditions the compose specification allows in a long-form depends_on.
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def console_scripts() -> set[str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return {line.split("=", 1)[0].strip() for line in lines if line.strip()}


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_every_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(SERVICES) <= set(services)


def test_infrastructure_images(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in _argv(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["image"] == "redis:7"
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    ports = {str(port) for port in services["mailpit"]["ports"]}
    assert {"8025:8025", "1025:1025"} <= ports


def test_apps_share_one_image_built_once(services: dict[str, dict[str, Any]]) -> None:
    assert {services[name]["image"] for name in APPS} == {IMAGE}
    builders = [name for name, service in services.items() if "build" in service]
    assert len(builders) == 1, f"the image must be built by exactly one service, not {builders}"
    assert services[builders[0]]["build"] in (".", {"context": "."})
    assert services[builders[0]]["image"] == IMAGE


def test_apps_get_the_mailroom_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["x-mailroom-env"] == MAILROOM_ENV
    for name in APPS:
        assert _environment(services[name]) == MAILROOM_ENV, name


def test_depends_on_uses_valid_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):  # short form: every dependency is service_started
            assert set(depends_on) <= set(services), name
            continue
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert spec.get("condition", "service_started") in DEPENDS_ON_CONDITIONS, name
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "relay", "worker"):
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name


def test_app_commands_are_console_scripts(
    services: dict[str, dict[str, Any]], console_scripts: set[str]
) -> None:
    expected = {
        "migrate": ["outbox-relay", "migrate"],
        "api": ["ingest-api", "serve", "--bind", "0.0.0.0:8000"],
        "relay": ["outbox-relay", "run"],
        "worker": ["mail-worker", "run", "--concurrency", "2"],
    }
    for name, service in services.items():
        if service.get("image") != IMAGE:
            continue
        argv = _argv(service["command"])
        assert argv[0] in console_scripts, f"{name}: {argv[0]} is not a console script"
    for name, argv in expected.items():
        assert _argv(services[name]["command"]) == argv, name
    assert "8000:8000" in {str(port) for port in services["api"]["ports"]}


def test_dockerfile(console_scripts: set[str]) -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    users = [line.split(None, 1)[1] for line in instructions if line.startswith("USER ")]
    assert users, "the image must not run as root"
    assert users[-1] not in ("root", "0")
    cmd = [line for line in instructions if line.startswith("CMD ")]
    assert len(cmd) == 1
    argv = json.loads(cmd[0].removeprefix("CMD "))
    assert argv == ["ingest-api", "serve", "--bind", "0.0.0.0:8000"]
    assert argv[0] in console_scripts
