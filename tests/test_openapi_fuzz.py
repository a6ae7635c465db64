"""schemathesis against a real ``ingest-api serve`` (gunicorn) and the OpenAPI
document it serves: with every check schemathesis has, positive and negative
inputs and a fixed seed, no input gets a 5xx and every response matches the
document. Every failure of every operation is collected and printed, then the
test fails if there is any."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.schemas import APIOperation

from shared import signatures
from tests.conftest import new_key
from tests.processes import Processes, http
from tests.services import free_port

pytestmark = pytest.mark.e2e

# Per operation and generation mode; hypothesis stops earlier when an operation
# has fewer distinct inputs (GET /v1/campaigns has only the API key).
EXAMPLES_PER_MODE = 60
MINIMUM_CASES = 2000
# Stateful scenarios after the per-operation cases, each up to this many steps.
STATEFUL_SCENARIOS = 10
STATEFUL_STEPS = 10
STATEFUL = "stateful"
SIGNED_OPERATION = "POST /v1/cdp/events"

# Where a check cannot hold for a reason the document cannot express, it is
# configured for that operation only (by its exact name), with the rule.
CONFIG: dict[str, Any] = {
    "generation": {"mode": "all", "deterministic": True},
    "checks": {
        # gunicorn refuses a request line over 4094 bytes with 414 before the app
        # sees it: a too-long query parameter (over its maxLength) may meet that first.
        "negative_data_rejection": {
            "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 414, 415, 422, 428, 429]
        },
    },
    "operations": [
        {
            # Rules beyond JSON Schema, each a 422 naming the field: an address must
            # pass email-validator (a dotted, non-special-use domain, ...); a `from`
            # must use one of the tenant's sender domains (example.com here); a
            # template must be valid Liquid and have every variable it uses; a
            # campaign or workflow must name an existing campaign of the tenant.
            "include-name": [
                "POST /v1/mails",
                "POST /v1/mails/batch",
                "POST /v1/campaigns",
                "PUT /v1/campaigns/{key}",
                "POST /v1/campaigns/{key}/trigger",
                "POST /v1/campaigns/{key}/preview",
                "POST /v1/suppressions",
                "POST /v1/workflows",
            ],
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 404, 409, 422]}},
        },
        {
            # The event is stored as received (jsonb): a NUL character or an unpaired
            # surrogate anywhere in it, keys included, is a 422 naming the field.
            "include-name": "POST /v1/cdp/events",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 422]}},
        },
        {
            # A webhook URL's host must resolve (DNS) to an address that is public
            # or in MAILROOM_WEBHOOK_ALLOW_NETWORKS: 422 naming `url`.
            "include-name": "POST /v1/webhooks",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 409, 422]}},
        },
        {
            # A cursor must be one this API returned (base64url of what it encodes):
            # another base64url string is a 400 naming `cursor`. Dates must be in the
            # years 2000 to 9000 (in UTC), beyond what format: date-time says: 422.
            "include-name": ["GET /v1/mails", "GET /v1/suppressions"],
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 400, 422]}},
        },
    ],
}


@dataclass
class Found:
    operation: str
    mode: str
    check: str
    status: int
    detail: str
    curl: str


@dataclass
class Existing:
    """Resources made before fuzzing, so that path parameters sometimes name one."""

    mail_id: str
    campaign_key: str
    workflow_id: str
    webhook_id: str
    suppressed: str


def _create_resources(base: str, auth: dict[str, str]) -> Existing:
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = http("POST", base + path, body, auth)
        assert 200 <= status < 300, (path, status, answer)
        assert isinstance(answer, dict)
        return answer

    mail = post(
        "/v1/mails",
        {"from": "a@example.com", "to": ["b@example.org"], "subject": "s", "text": "t"},
    )
    campaign = post(
        "/v1/campaigns",
        {"key": "welcome", "from": "a@example.com", "subject": "Hi {{ name }}", "text": "t"},
    )
    workflow = post("/v1/workflows", {"event": "Signed Up", "campaign": campaign["key"]})
    webhook = post("/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["sent"]})
    post("/v1/suppressions", {"email": "gone@example.org"})
    return Existing(mail["id"], campaign["key"], workflow["id"], webhook["id"], "gone@example.org")


def _existing_path_parameters(existing: Existing) -> dict[str, str]:
    return {
        "mail_id": existing.mail_id,
        "key": existing.campaign_key,
        "workflow_id": existing.workflow_id,
        "webhook_id": existing.webhook_id,
        "email": existing.suppressed,
    }


def _strategy(
    operation: APIOperation, mode: GenerationMode, known: dict[str, str]
) -> st.SearchStrategy[schemathesis.Case]:
    """Generated cases; for a path naming a resource, also cases naming one that exists."""
    generated = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.NEGATIVE:
        generated = generated.filter(_negation_is_sent)
    names = {parameter.name for parameter in operation.path_parameters}
    if mode is GenerationMode.POSITIVE and names and names <= known.keys():
        existing = operation.as_strategy(
            generation_mode=mode, path_parameters={name: known[name] for name in names}
        )
        return st.one_of(generated, existing)
    return generated


def _negation_is_sent(case: schemathesis.Case) -> bool:
    """False for a negative case whose only violation never reaches the server:
    requests drops a query parameter whose value is an empty list, so
    ``{"cursor": "", "": []}`` is sent as the valid ``?cursor=``."""
    return not any(value == [] for value in (case.query or {}).values())


def _sign_cdp_event(case: schemathesis.Case, base: str, tenant_id: str, secret: str) -> None:
    """POST /v1/cdp/events is authenticated by an HMAC of the raw body, which no
    schema can express: name the tenant and sign exactly the bytes the transport
    will send, unless this case is about wrong headers (a negative one)."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    prepared = requests.Request(**case.as_transport_kwargs(base_url=base)).prepare()
    body = prepared.body or b""
    raw = body.encode() if isinstance(body, str) else body
    case.headers = {
        **(case.headers or {}),
        "X-Mailroom-Tenant": tenant_id,
        signatures.HEADER: signatures.sign(secret, int(time.time()), raw),
    }


def test_every_operation_of_the_live_api_conforms_to_its_openapi_document(
    procs: Processes,
) -> None:
    port = free_port()
    procs.api(port, workers=2)
    base = f"http://127.0.0.1:{port}"
    key = new_key(procs)
    auth = {"Authorization": f"Bearer {key}"}
    secret_lines = procs.cli("ingest-api", "rotate-webhook-secret", "acme").strip().splitlines()
    tenant_id = secret_lines[-2].split("X-Mailroom-Tenant: ")[1].rstrip("):")
    secret = secret_lines[-1]
    known = _existing_path_parameters(_create_resources(base, auth))

    schema = schemathesis.openapi.from_url(
        f"{base}/openapi.json", config=SchemathesisConfig.from_dict(CONFIG)
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [operation.label for operation in operations]

    found: list[Found] = []
    cases: Counter[str] = Counter()
    started = time.monotonic()
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = Run(base, auth, tenant_id, secret, session, found, cases)
                run.fuzz(operation, mode, known)
            # Sequences along the links schemathesis infers (create, then read or
            # delete what was created): the checks that need earlier steps
            # (use_after_free, ensure_resource_availability) run here.
            run = Run(base, auth, tenant_id, secret, session, found, cases)
            run.stateful(schema)
    elapsed = time.monotonic() - started

    total = sum(cases.values())
    print(f"\n{total} cases in {elapsed:.0f} s over {len(operations)} operations")
    for label, count in sorted(cases.items()):
        print(f"  {count:5d}  {label}")
    _print_summary(found)
    assert total >= MINIMUM_CASES, cases
    assert not found, f"{len(found)} failures, see the summary above"


@dataclass
class Run:
    base: str
    auth: dict[str, str]
    tenant_id: str
    secret: str
    session: requests.Session
    found: list[Found]
    cases: Counter[str]

    def fuzz(self, operation: APIOperation, mode: GenerationMode, known: dict[str, str]) -> None:
        signed = operation.label == SIGNED_OPERATION

        @given(case=_strategy(operation, mode, known))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            derandomize=True,  # the fixed seed: every run sends the same cases
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def one_case(case: schemathesis.Case) -> None:
            self.cases[operation.label] += 1
            if signed:
                _sign_cdp_event(case, self.base, self.tenant_id, self.secret)
            # Sent and validated in two steps (as call_and_validate does) so that
            # the summary can show what the API answered.
            headers = None if signed else self.auth
            response = case.call(base_url=self.base, session=self.session, headers=headers)
            try:
                # No `checks`: every check schemathesis has, as configured in CONFIG.
                case.validate_response(
                    response,
                    headers=headers,
                    transport_kwargs={
                        "base_url": self.base,
                        "session": self.session,
                        "headers": dict(headers or {}),
                    },
                )
            except FailureGroup as group:
                self.found.extend(_describe(case, mode, response, group.exceptions))
            except Failure as failure:
                self.found.extend(_describe(case, mode, response, [failure]))

        one_case()

    def stateful(self, schema: Any) -> None:
        run = self

        class Scenario(schema.as_state_machine()):  # type: ignore[misc]
            def before_call(self, case: schemathesis.Case) -> None:
                if case.operation.label == SIGNED_OPERATION:
                    _sign_cdp_event(case, run.base, run.tenant_id, run.secret)

            def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
                signed = case.operation.label == SIGNED_OPERATION
                return {
                    "base_url": run.base,
                    "session": run.session,
                    "headers": {} if signed else dict(run.auth),
                }

            def validate_response(
                self,
                response: Any,
                case: schemathesis.Case,
                additional_checks: Any = None,
                **kwargs: Any,
            ) -> None:
                run.cases[f"{case.operation.label} (stateful)"] += 1
                try:
                    super().validate_response(response, case, additional_checks, **kwargs)
                except FailureGroup as group:
                    run.found.extend(_describe(case, STATEFUL, response, group.exceptions))
                except Failure as failure:
                    run.found.extend(_describe(case, STATEFUL, response, [failure]))

        Scenario.run(
            settings=settings(
                max_examples=STATEFUL_SCENARIOS,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )


def _describe(
    case: schemathesis.Case, mode: GenerationMode | str, response: Any, failures: Any
) -> list[Found]:
    answer = f"{response.status_code} {response.text[:300]} | sent query: {case.query!r}"
    return [
        Found(
            operation=case.operation.label,
            mode=mode if isinstance(mode, str) else mode.value,
            check=f"{type(failure).__name__}: {failure.title}",
            status=response.status_code,
            detail=" ".join(str(failure.message).split())[:300] + " | answer: " + answer,
            curl=case.as_curl_command(),
        )
        for failure in failures
    ]


def _print_summary(found: list[Found]) -> None:
    """One line per (operation, check) with how often, and the first example."""
    groups: dict[tuple[str, str], list[Found]] = {}
    for item in found:
        groups.setdefault((item.operation, item.check), []).append(item)
    for (operation, check), items in sorted(groups.items()):
        first = items[0]
        print(f"\n{operation} [{first.mode}] {check} x{len(items)} status {first.status}")
        print(f"  {first.detail}")
        print(f"  {first.curl}")
    if found:
        print(json.dumps({f"{o} | {c}": len(i) for (o, c), i in sorted(groups.items())}, indent=1))
