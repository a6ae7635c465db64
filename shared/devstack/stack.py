"""``mailroom up``: the whole pipeline on one machine, from one command.

Services that are not configured through ``MAILROOM_*`` variables are embedded
(PostgreSQL, Redis, an SMTP sink that writes ``.eml`` files); the three apps
run as child processes with the resulting environment. Everything started here
is stopped here: on Ctrl-C or SIGTERM, and when one of the apps dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import psycopg

from shared.config import ConfigError, load_settings, variable_name
from shared.devstack import demo
from shared.devstack.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    port_is_free,
    start_smtp_sink,
)
from shared.devstack.probe import ProbeError, key_is_accepted, wait_until_ready
from shared.devstack.processes import Child, ScriptNotFoundError, Supervisor, console_script

API_HOST = "127.0.0.1"
DEFAULT_MESSAGE_ID_DOMAIN = "mailroom.localhost"
# A local stack's webhook receivers run on this machine: let webhooks reach loopback.
DEV_WEBHOOK_ALLOW_NETWORKS = "127.0.0.0/8,::1/128"
READY_TIMEOUT = 60.0
CHILD_STOP_TIMEOUT = 10.0
WORKER_REQUIRES = ("database_url", "broker_url", "smtp", "message_id_domain")


class StackError(RuntimeError):
    """The stack could not start; the message says why."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived: unwind and stop everything (not an error)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class ChildExited(BaseException):
    """One of the apps exited while the stack was meant to be running."""

    def __init__(self, child: Child) -> None:
        super().__init__(child.name)
        self.child = child


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _request_stop(signum: int, _frame: FrameType | None) -> NoReturn:
    raise StopRequested(signum)


def _already_stopping(_signum: int, _frame: FrameType | None) -> None:
    click.echo("mailroom: already stopping; please wait", err=True)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _request_stop) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say(message: str) -> None:
    click.echo(f"mailroom: {message}", err=True)


def _unset(env: dict[str, str], setting: str) -> bool:
    return not env.get(variable_name(setting), "").strip()


def _redacted(url: str) -> str:
    """*url* without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _lock_data_dir(data_dir: Path, stack: ExitStack) -> None:
    """One ``mailroom up`` per data folder: the embedded servers are not shareable."""
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    stack.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StackError(f"another mailroom up is running with {data_dir}") from None


def _step(description: str, action: Callable[[], Any]) -> Callable[[], None]:
    """A shutdown step that reports its own failure instead of skipping the others."""

    def run() -> None:
        _say(description)
        try:
            action()
        except Exception as exc:
            _say(f"{description} failed: {type(exc).__name__}: {exc}")

    return run


@dataclass
class RunningStack:
    data_dir: Path
    port: int
    env: dict[str, str]
    mail_folder: Path | None = None
    key: str = ""

    @property
    def api_url(self) -> str:
        return f"http://{API_HOST}:{self.port}"


def _start_services(stack: ExitStack, data_dir: Path, env: dict[str, str]) -> Path | None:
    """Start an embedded server for each service with no URL set; return the mail folder."""
    if _unset(env, "database_url"):
        postgres = EmbeddedPostgres(data_dir / "pg")
        stack.callback(_step("stopping PostgreSQL", postgres.stop))
        _say("starting embedded PostgreSQL")
        env[variable_name("database_url")] = postgres.start()
        _say(f"PostgreSQL: embedded, data in {postgres.pgdata}")
    else:
        _say("PostgreSQL: MAILROOM_DATABASE_URL")
    if _unset(env, "broker_url"):
        redis = EmbeddedRedis(data_dir / "redis.db", data_dir / "logs" / "redis.log")
        stack.callback(_step("stopping Redis", redis.stop))
        env[variable_name("broker_url")] = redis.start()
        _say(f"Redis: embedded, data in {data_dir}")
    else:
        _say("broker: MAILROOM_BROKER_URL")
    mail_folder = None
    if _unset(env, "smtp"):
        mail_folder = data_dir / "mail"
        sink = start_smtp_sink(mail_folder)
        stack.callback(_step("stopping the SMTP sink", sink.stop))
        env[variable_name("smtp")] = sink.url
        _say(f"SMTP: sink at {sink.url}, mail lands in {mail_folder}")
    else:
        _say(f"SMTP: {_redacted(env[variable_name('smtp')])}")
    if _unset(env, "message_id_domain"):
        env[variable_name("message_id_domain")] = DEFAULT_MESSAGE_ID_DOMAIN
    if _unset(env, "webhook_allow_networks"):
        env[variable_name("webhook_allow_networks")] = DEV_WEBHOOK_ALLOW_NETWORKS
    return mail_folder


def _dev_unsubscribe_links(env: dict[str, str], data_dir: Path, port: int) -> None:
    """Unsubscribe links that work locally: this API's address, and a secret made once
    and kept in the data folder (so links in mail already sent keep working)."""
    if _unset(env, "public_url"):
        env[variable_name("public_url")] = f"http://{API_HOST}:{port}"
    if _unset(env, "unsubscribe_secret"):
        secret_file = data_dir / "unsubscribe-secret"
        if not secret_file.exists():
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
        env[variable_name("unsubscribe_secret")] = secret_file.read_text().strip()


def _check_alive(supervisor: Supervisor) -> None:
    exited = supervisor.first_exited()
    if exited is not None:
        raise ChildExited(exited)


def _ensure_key(running: RunningStack, supervisor: Supervisor) -> None:
    """The stored key if the API accepts it, else a new one (a new database, say)."""
    key_file = running.data_dir / demo.KEY_FILE_NAME
    if running.key and key_is_accepted(API_HOST, running.port, running.key):
        return
    if running.key:
        _say(f"the key in {key_file} is not accepted by this database; creating a new one")
    running.key = demo.create_key(supervisor, key_file)
    if not key_is_accepted(API_HOST, running.port, running.key):
        raise StackError("the API does not accept the key just created")


def _start(stack: ExitStack, data_dir: Path, port: int) -> tuple[RunningStack, Supervisor]:
    _lock_data_dir(data_dir, stack)
    if not port_is_free(API_HOST, port):
        raise StackError(f"port {port} on {API_HOST} is in use; choose another with --port")

    env = dict(os.environ)
    mail_folder = _start_services(stack, data_dir, env)
    _dev_unsubscribe_links(env, data_dir, port)
    try:
        settings = load_settings(require=WORKER_REQUIRES, environ=env)
    except ConfigError as exc:
        raise StackError(str(exc)) from None
    running = RunningStack(data_dir, port, env, mail_folder)

    supervisor = Supervisor(env, data_dir / "logs")
    stack.callback(
        _step("stopping api, relay and worker", lambda: supervisor.stop_all(CHILD_STOP_TIMEOUT))
    )
    _say(f"schema: {demo.migrate(supervisor)}")
    if demo.ensure_tenant(supervisor, settings.database_url):
        _say(f"created tenant {demo.TENANT} (sender domain {demo.SENDER_DOMAIN})")
    running.key = demo.read_key(data_dir / demo.KEY_FILE_NAME) or ""

    supervisor.start(
        "api",
        [console_script("ingest-api"), "serve", "--bind", f"{API_HOST}:{port}", "--workers", "1"],
    )
    supervisor.start("relay", [console_script("outbox-relay"), "run"])
    supervisor.start("worker", [console_script("mail-worker"), "run", "--concurrency", "1"])
    _say(f"started api, relay and worker; their logs are in {supervisor.log_dir}")
    wait_until_ready(API_HOST, port, READY_TIMEOUT, lambda: _check_alive(supervisor))
    _ensure_key(running, supervisor)
    return running, supervisor


def banner(running: RunningStack) -> str:
    """What to do next: the address, the key, a curl command, where mail goes."""
    payload = json.dumps(
        {
            "from": demo.SENDER,
            "to": ["someone@example.net"],
            "subject": "Hello from mailroom",
            "text": "It works.",
        }
    )
    auth = shlex.quote(f"Authorization: Bearer {running.key}")
    key_file = running.data_dir / demo.KEY_FILE_NAME
    if running.mail_folder is not None:
        mail = f"  Mail lands in:  {running.mail_folder}  (one .eml file per mail)"
    else:
        mail = f"  Mail goes to:   {_redacted(running.env[variable_name('smtp')])}"
    return "\n".join(
        [
            "",
            "mailroom is up.",
            f"  API:            {running.api_url}",
            f"  API key:        {running.key}",
            f"                  (tenant {demo.TENANT}, kept in {key_file})",
            mail,
            f"  Logs:           {running.data_dir / 'logs'}",
            "",
            f"Send a mail from {demo.SENDER}:",
            "",
            f"  curl -sS {running.api_url}/v1/mails \\",
            f"    -H {auth} \\",
            "    -H 'Content-Type: application/json' \\",
            f"    -d {shlex.quote(payload)}",
            "",
            "then see its status:",
            "",
            f"  curl -sS {running.api_url}/v1/mails/<id> -H {auth}",
            "",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def _describe_exit(child: Child) -> str:
    code = child.process.returncode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    tail = child.log_tail()
    shown = f"; the end of {child.log_path}:\n{tail}" if tail else ""
    return f"{child.name} (pid {child.pid}) {how} unexpectedly{shown}"


def _calm_signals() -> None:
    """From now on a stop signal only gets a note: shutdown is already under way."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _already_stopping)


def up(data_dir: Path, port: int) -> int:
    """Run the stack until a stop signal (exit 0) or a failure (exit 1)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cleanup = ExitStack()
    code = 0
    with _stop_on_signals():
        try:
            running, supervisor = _start(cleanup, data_dir, port)
            click.echo(banner(running))
            while True:
                _check_alive(supervisor)
                time.sleep(0.5)
        except StopRequested as stop:
            _calm_signals()
            _say(f"{signal.Signals(stop.signum).name} received, stopping")
        except ChildExited as exited:
            _calm_signals()
            _say(_describe_exit(exited.child))
            _say("stopping everything")
            code = 1
        except (
            StackError,
            EmbeddedServerError,
            ScriptNotFoundError,
            demo.BootstrapError,
            ProbeError,
            psycopg.Error,
        ) as exc:
            _calm_signals()
            _say(str(exc))
            code = 1
        finally:
            _calm_signals()
            cleanup.close()
    _say("stopped")
    return code
