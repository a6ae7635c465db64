"""The curl examples of README.md and docs/api.md, run against the API as written.

Each ``curl -sS http://127.0.0.1:8000/... -d '<json>'`` of a ``sh`` block is posted
with the test tenant's key, file by file in the order they are read (README.md
first, then docs/api.md, which builds on it); when the block says what comes back
(``# 201 {...}``), that status must come back. An example that stops working fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flask.testing import FlaskClient

from tests.conftest import TenantKey

REPOSITORY = Path(__file__).resolve().parent.parent
# The pages whose examples run, in the order a reader meets them.
DOCUMENTS = (REPOSITORY / "README.md", REPOSITORY / "docs" / "api.md")
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
_CURL = re.compile(
    r"curl -sS http://127\.0\.0\.1:8000(?P<path>/v1/[^\s\\]+)[^\n]*\n"
    r"(?:\s*-H [^\n]*\n)*\s*-d '(?P<body>.*?)'\n(?:# (?P<status>\d{3}))?",
    re.S,
)


def examples(document: Path) -> list[tuple[str, str, int | None]]:
    found = []
    for block in _BLOCK.findall(document.read_text(encoding="utf-8")):
        for match in _CURL.finditer(block):
            status = int(match["status"]) if match["status"] else None
            found.append((match["path"], match["body"], status))
    return found


def test_every_document_has_curl_examples_the_test_finds() -> None:
    # A page whose examples the regex stops matching would otherwise pass unnoticed.
    for document in DOCUMENTS:
        assert examples(document), document


def test_the_readme_examples_run_as_written(client: FlaskClient, tenant: TenantKey) -> None:
    ran = []
    every_example = [example for document in DOCUMENTS for example in examples(document)]
    for path, body, status in every_example:
        response = client.post(
            path, data=body, content_type="application/json",
            headers={"Authorization": f"Bearer {tenant.key}"},
        )  # fmt: skip
        answer = response.get_json()
        if status is not None and status >= 400:  # an example of a refusal
            assert response.status_code == status, (path, answer)
            continue
        if path == "/v1/webhooks" and response.status_code == 422:
            # This machine has no DNS beyond loopback: the only allowed refusal is that.
            assert "does not resolve" in answer["errors"]["url"][0], answer
            continue
        assert response.status_code < 300, (path, answer)
        if status is not None:
            assert response.status_code == status, (path, answer)
        ran.append((path, response.status_code, json.loads(body)))
    paths = [path for path, _, _ in ran]
    for wanted in (
        "/v1/mails",
        "/v1/campaigns",
        "/v1/campaigns/welcome/trigger",
        "/v1/campaigns/welcome/preview",
        "/v1/workflows",
    ):
        assert wanted in paths, (wanted, paths)
