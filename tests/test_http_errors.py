"""Every client mistake is a 4xx problem+json naming the field; 503 only for an
unreachable database. Through the real Flask app, a real gunicorn for what
gunicorn answers itself, and the strict JSON parser on its own (hypothesis)."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors as sqlstate

from ingest_api import strict_json
from ingest_api.app import MAX_BODY_BYTES
from ingest_api.strict_json import MAX_DEPTH, MAX_INTEGER, StrictJsonError
from shared import signatures
from shared.config import Settings
from tests.conftest import TenantKey, run_relay_cli
from tests.processes import Processes
from tests.services import free_port
from tests.test_workflows_cdp import EVENT, set_secret

PROBLEM_JSON = "application/problem+json"
MAIL: dict[str, Any] = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hello",
    "text": "Hi Bob",
}


def auth(tenant: TenantKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.key}"}


def post_raw(client: FlaskClient, tenant: TenantKey, path: str, body: bytes, **headers: str) -> Any:
    return client.post(
        path, data=body, content_type="application/json", headers={**auth(tenant), **headers}
    )


def post_cdp_raw(client: FlaskClient, tenant: TenantKey, body: bytes) -> Any:
    return client.post(
        "/v1/cdp/events",
        data=body,
        content_type="application/json",
        headers={
            "X-Mailroom-Tenant": str(tenant.tenant_id),
            "X-Mailroom-Signature": signatures.sign("s3cret-" + "ab" * 16, int(time.time()), body),
        },
    )


def refused(response: Any, status: int, field: str) -> dict[str, Any]:
    """Assert a problem+json *status* whose ``errors`` name *field*; return the body."""
    assert response.status_code == status, (response.status_code, response.get_data())
    assert response.mimetype == PROBLEM_JSON
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert field in body.get("errors", {}), body
    return body


# --- NUL everywhere ----------------------------------------------------------------


def test_nul_in_a_workflow_event_name_is_a_422_naming_the_field(
    client: FlaskClient, tenant: TenantKey
) -> None:
    body = json.dumps({"event": "Order\u0000Completed", "campaign": "welcome"}).encode()
    refused(post_raw(client, tenant, "/v1/workflows", body), 422, "event")


def test_nul_in_an_object_key_at_any_depth_names_its_path(
    client: FlaskClient, tenant: TenantKey
) -> None:
    body = json.dumps({**MAIL, "metadata": {"a\u0000b": "x"}}).encode()
    response = post_raw(client, tenant, "/v1/mails", body)
    refused(response, 422, "metadata.a\\u0000b")


def test_nul_in_a_path_parameter_is_a_400_naming_it(client: FlaskClient, tenant: TenantKey) -> None:
    refused(client.get("/v1/campaigns/a%00b", headers=auth(tenant)), 400, "key")


def test_nul_in_the_tag_query_parameter_is_a_400_naming_it(
    client: FlaskClient, tenant: TenantKey
) -> None:
    refused(client.get("/v1/mails?tag=a%00b", headers=auth(tenant)), 400, "tag")


def test_nul_in_the_cdp_message_id_query_parameter_is_a_400_naming_it(
    client: FlaskClient, tenant: TenantKey
) -> None:
    response = client.get("/v1/cdp/events?message_id=a%00b", headers=auth(tenant))
    refused(response, 400, "message_id")


def test_nul_in_the_authorization_header_is_a_400_naming_it(client: FlaskClient) -> None:
    response = client.get("/v1/mails", headers={"Authorization": "Bearer mr_a\x00b"})
    refused(response, 400, "Authorization")


# --- numbers jsonb and int() refuse -------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_non_finite_metadata_number_is_a_422_naming_the_field(
    client: FlaskClient, tenant: TenantKey, token: str
) -> None:
    body = ('{"from": "alice@example.com", "to": ["bob@example.org"], "subject": "Hi",'
            f' "text": "x", "metadata": {{"score": {token}}}}}').encode()  # fmt: skip
    refused(post_raw(client, tenant, "/v1/mails", body), 422, "metadata.score")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "1e400"])
def test_a_non_finite_cdp_property_is_a_422_naming_its_path(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, token: str
) -> None:
    set_secret(db, tenant)
    event = json.dumps({**EVENT, "properties": {"a": {"b": "PLACEHOLDER"}}})
    body = event.replace('"PLACEHOLDER"', token).encode()
    refused(post_cdp_raw(client, tenant, body), 422, "properties.a.b")


def test_a_5000_digit_ttl_is_a_422_naming_the_field(client: FlaskClient, tenant: TenantKey) -> None:
    body = json.dumps({**MAIL, "ttl_seconds": 12345}).encode().replace(b"12345", b"9" * 5000)
    refused(post_raw(client, tenant, "/v1/mails", body), 422, "ttl_seconds")


def test_invalid_utf8_is_a_400(client: FlaskClient, tenant: TenantKey) -> None:
    body = json.dumps(MAIL).encode().replace(b"Hi Bob", b"Hi \xff Bob")
    refused(post_raw(client, tenant, "/v1/mails", body), 400, "_schema")


# --- nesting ------------------------------------------------------------------------


def _post_routes(app: Flask) -> list[str]:
    """Every POST route of the API that takes a JSON body, path parameters filled in."""
    paths = []
    for rule in app.url_map.iter_rules():
        if "POST" in (rule.methods or ()) and rule.rule.startswith("/v1/"):
            if rule.rule.startswith("/v1/unsubscribe/"):
                continue  # a form post from a mail client: its body is never read
            paths.append(re.sub(r"<(?:\w+:)?(\w+)>", "welcome", rule.rule))
    return sorted(paths)


def test_json_nested_100000_deep_is_a_4xx_on_every_post_endpoint(
    app: Flask, client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    set_secret(db, tenant)
    deep = b"[" * 100_000 + b"]" * 100_000
    paths = _post_routes(app)
    assert "/v1/mails" in paths and "/v1/cdp/events" in paths
    for path in paths:
        if path == "/v1/cdp/events":
            response = post_cdp_raw(client, tenant, deep)
        else:
            response = post_raw(client, tenant, path, deep)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert response.mimetype == PROBLEM_JSON, path


def test_nesting_beyond_the_limit_names_the_field(client: FlaskClient, tenant: TenantKey) -> None:
    nested: Any = "x"
    for _ in range(MAX_DEPTH):
        nested = {"a": nested}
    body = json.dumps({**MAIL, "metadata": nested}).encode()
    dotted = "metadata." + ".".join(["a"] * (MAX_DEPTH - 1))
    refused(post_raw(client, tenant, "/v1/mails", body), 422, dotted)


# --- HTTP-level answers -------------------------------------------------------------


def test_405_names_the_allowed_methods(client: FlaskClient, tenant: TenantKey) -> None:
    response = client.delete("/v1/mails", headers=auth(tenant))
    assert response.status_code == 405
    assert response.mimetype == PROBLEM_JSON
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}


def _raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send *request* as is; the status, headers and body of the answer."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as sock:
        # The server may answer early and close: its answer is still readable.
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), response.read()


@pytest.fixture
def api_port(procs: Processes) -> Iterator[int]:
    port = free_port()
    procs.api(port)
    yield port


def test_an_over_long_request_line_is_a_414_problem_json(api_port: int) -> None:
    request = f"GET /v1/mails?tag={'a' * 8000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    status, headers, body = _raw_exchange(api_port, request)
    assert status == 414
    assert headers["Content-Type"] == PROBLEM_JSON
    problem = json.loads(body)
    assert problem["status"] == 414 and "url" in problem["errors"]


def test_a_chunked_body_over_the_limit_is_a_413(api_port: int, tenant: TenantKey) -> None:
    head = (
        "POST /v1/mails HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {tenant.key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b" " * (1024 * 1024)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 1)
    )
    status, headers, body = _raw_exchange(api_port, head + chunks + b"0\r\n\r\n")
    assert status == 413, body
    assert headers["Content-Type"] == PROBLEM_JSON


# --- /metrics labels ----------------------------------------------------------------


def test_unknown_methods_do_not_grow_the_metrics(client: FlaskClient) -> None:
    def series() -> set[str]:
        text = client.get("/metrics").get_data(as_text=True)
        return {
            line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("mailroom_http")
        }

    client.open("/metrics", method="BREW0")
    series()  # the first scrape's own GET /metrics series show from the second on
    before = series()
    for number in range(1, 6):
        assert client.open("/metrics", method=f"BREW{number}").status_code == 405
    after = series()
    assert not any("BREW" in name for name in after)
    grown = after - before
    assert not grown, sorted(grown)[:5]


# --- /docs offline ------------------------------------------------------------------


def test_docs_load_swagger_ui_from_the_app_itself(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), f"{asset} is not served by the app"
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.get_data()) > 1000, asset


# --- database errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (sqlstate.UndefinedColumn("column x does not exist"), 500),
        (sqlstate.UniqueViolation("duplicate key"), 500),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), 500),
        (psycopg.OperationalError("connection refused"), 503),
        (sqlstate.AdminShutdown("terminating connection"), 503),
        (psycopg.InterfaceError("the connection is closed"), 503),
        (sqlstate.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), 503),
    ],
)
def test_only_an_unreachable_database_is_a_503(
    app: Flask, error: psycopg.Error, status: int
) -> None:
    def fail() -> None:
        raise error

    app.add_url_rule("/fails", "fails", fail)
    response = app.test_client().get("/fails")
    assert response.status_code == status
    assert response.mimetype == PROBLEM_JSON
    assert ("Retry-After" in response.headers) == (status == 503)
    assert response.get_json()["request_id"]


# --- outbox-relay durations ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--since", "99999999d"),
        ("list", "--since", "9" * 400),
        ("list", "--until", "0001-01-01T00:00+01:00"),
        ("purge", "--older-than", "99999999d"),
    ],
)
def test_an_out_of_range_time_is_one_line_and_exit_2(
    settings: Settings, args: tuple[str, ...]
) -> None:
    result = run_relay_cli(settings, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert f"{args[0]}: error: " in line and args[2][:20] in line


# --- the strict parser (hypothesis) ---------------------------------------------------

# What the parser must refuse, drawn as often as any other kind of scalar.
_REFUSED_SCALARS = st.sampled_from(
    [
        *(math.nan, math.inf, -math.inf, MAX_INTEGER + 1, -MAX_INTEGER - 1, 10**30),
        *("a\x00b", "\x00", "\ud800", "x\udfff"),
    ]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_INTEGER, max_value=MAX_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | _REFUSED_SCALARS
)
_KEYS = st.text(max_size=4) | st.sampled_from(["k\x00", "\udc00"])
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


def _expected_refusals(value: Any, path: tuple[str, ...] = (), depth: int = 0) -> set[str]:
    """Dotted paths the strict parser must name, computed independently of it."""
    here = ".".join(path) if path else "_schema"
    found: set[str] = set()
    if isinstance(value, float):
        bad = not math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        bad = abs(value) > MAX_INTEGER
    elif isinstance(value, str):
        bad = "\x00" in value or re.search("[\ud800-\udfff]", value) is not None
    else:
        bad = False
    if bad:
        found.add(here)
    elif isinstance(value, list | dict):
        if depth >= MAX_DEPTH:
            return {here}
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            name = strict_json.shown(key) if isinstance(key, str) else str(key)
            if isinstance(key, str) and ("\x00" in key or re.search("[\ud800-\udfff]", key)):
                found.add(".".join((*path, name)))
            found |= _expected_refusals(child, (*path, name), depth + 1)
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_VALUES, wrap=st.integers(min_value=0, max_value=MAX_DEPTH + 3))
def test_strict_parse_equals_json_loads_or_names_what_it_refuses(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = [value]
    text = json.dumps(value)  # NaN/Infinity tokens and \ud800 escapes included
    expected = _expected_refusals(value)
    if not expected:
        assert strict_json.loads(text.encode()) == json.loads(text)
        return
    with pytest.raises(StrictJsonError) as caught:
        strict_json.loads(text.encode())
    assert caught.value.status == 422
    named = set(caught.value.errors)
    if len(expected) <= strict_json.MAX_REPORTED:
        assert named == expected
    else:  # the first MAX_REPORTED, in document order
        assert named < expected and len(named) == strict_json.MAX_REPORTED


@settings(max_examples=100, deadline=None)
@given(
    token=st.from_regex(
        r"-?(0|[1-9][0-9]{0,40}|[1-9][0-9]{4990,5010})(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
        fullmatch=True,
    )
)
def test_strict_numbers_are_finite_and_bounded(token: str) -> None:
    text = '{"n": ' + token + "}"
    is_integer = not re.search(r"[.eE]", token)
    if is_integer:
        digits = token.lstrip("-")
        allowed = len(digits) <= 19 and abs(int(token)) <= MAX_INTEGER
    else:
        allowed = math.isfinite(float(token))
    if allowed:
        assert strict_json.loads(text) == json.loads(text)
    else:
        with pytest.raises(StrictJsonError) as caught:
            strict_json.loads(text)
        assert caught.value.status == 422 and set(caught.value.errors) == {"n"}
