"""GET /metrics: in one process (Flask's test client, the default registry) and
under gunicorn with several workers (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from shared.config import Settings
from tests.conftest import TenantKey, settings_env
from tests.processes import Processes, http, wait_until
from tests.services import free_port

MAIL = {
    "from": "Alice <alice@example.com>",
    "to": ["bob@example.org"],
    "subject": "Hello",
    "text": "Hi Bob",
}
POST_202 = {"method": "POST", "endpoint": "/v1/mails", "status": "202"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return parse(response.get_data(as_text=True))


def test_metrics_count_requests_by_endpoint_and_status(
    client: FlaskClient, tenant: TenantKey
) -> None:
    before = scrape(client)
    headers = {"Authorization": f"Bearer {tenant.key}"}
    assert client.post("/v1/mails", json=MAIL, headers=headers).status_code == 202
    assert client.post("/v1/mails", json=MAIL).status_code == 401
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)

    def rose(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert rose("mailroom_http_requests_total", **POST_202) == 1
    assert rose("mailroom_http_requests_total", **{**POST_202, "status": "401"}) == 1
    assert (
        rose("mailroom_http_requests_total", method="GET", endpoint="unmatched", status="404") == 1
    )
    assert rose("mailroom_http_request_duration_seconds_count", **POST_202) == 1
    assert rose("mailroom_http_request_duration_seconds_bucket", **POST_202, le="+Inf") == 1
    assert rose("mailroom_http_request_duration_seconds_sum", **POST_202) > 0
    # Both rate limit counters are exposed even before anything happened to them.
    assert ("mailroom_rate_limit_failures_total", frozenset()) in after
    for result in ("allowed", "limited", "unchecked"):
        assert ("mailroom_rate_limit_requests_total", frozenset({("result", result)})) in after


def test_accepted_mails_are_counted(client: FlaskClient, tenant: TenantKey) -> None:
    before = value(scrape(client), "mailroom_mails_accepted_total")
    headers = {"Authorization": f"Bearer {tenant.key}"}
    assert client.post("/v1/mails", json=MAIL, headers=headers).status_code == 202
    assert client.post("/v1/mails", json={**MAIL, "to": []}, headers=headers).status_code == 422
    assert value(scrape(client), "mailroom_mails_accepted_total") == before + 1, (
        "ingest_api.metrics.record_mails_accepted(n) must be called after the ingest COMMIT"
    )


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=15) as response:
        return str(response.read().decode())


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    if not children.exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children")
    return [int(pid) for pid in children.read_text().split()]


@pytest.fixture
def procs(tmp_path: Path, settings: Settings) -> Iterator[Processes]:
    processes = Processes(settings_env(settings), tmp_path)
    yield processes
    processes.stop_all()


@pytest.mark.e2e
def test_gunicorn_workers_add_up_and_survive_a_worker_restart(
    procs: Processes, tenant: TenantKey, tmp_path: Path
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # the rate limiter fails open in every worker
    procs.env["MAILROOM_RATE_LIMIT_URL"] = closed
    metrics_dir = tmp_path / "metrics"  # serve creates it
    procs.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    port = free_port()
    api = procs.api(port, workers=3)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {tenant.key}"}

    sent = 12
    for _ in range(sent):
        status, body = http("POST", f"{base}/v1/mails", MAIL, auth)
        assert status == 202, body

    # Each scrape may reach any worker: every one must report all workers' requests.
    for _ in range(6):
        samples = parse(http_text(f"{base}/metrics"))
        assert value(samples, "mailroom_http_requests_total", **POST_202) == sent
        assert value(samples, "mailroom_rate_limit_requests_total", result="unchecked") == sent
        assert 1 <= value(samples, "mailroom_rate_limit_failures_total") <= 3
        assert value(samples, "mailroom_mails_accepted_total") == sent
    assert any(metrics_dir.glob("counter_*.db"))

    # A worker dies; gunicorn replaces it; its counts stay.
    pids = worker_pids(api.process.pid)
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: len(set(worker_pids(api.process.pid)) - set(pids)) == 1, 30, api)
    status, _ = http("POST", f"{base}/v1/mails", MAIL, auth)
    assert status == 202
    samples = parse(http_text(f"{base}/metrics"))
    assert value(samples, "mailroom_http_requests_total", **POST_202) == sent + 1
    assert api.stop() == 0
    assert any(metrics_dir.glob("counter_*.db"))  # a folder we chose is left alone


@pytest.mark.e2e
def test_serve_makes_a_fresh_metrics_folder_when_none_is_set(
    procs: Processes, tenant: TenantKey
) -> None:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # pytest's own process never sets it
    port = free_port()
    api = procs.api(port, workers=2)
    environ = Path(f"/proc/{api.process.pid}/environ").read_bytes().split(b"\0")
    (setting,) = [entry for entry in environ if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    folder = Path(setting.split(b"=", 1)[1].decode())
    assert folder.is_dir()
    assert folder.name.startswith("mailroom-metrics-")
    status, _ = http(
        "POST", f"http://127.0.0.1:{port}/v1/mails", MAIL, {"Authorization": f"Bearer {tenant.key}"}
    )
    assert status == 202
    samples = parse(http_text(f"http://127.0.0.1:{port}/metrics"))
    assert value(samples, "mailroom_http_requests_total", **POST_202) == 1
    assert api.stop() == 0
    assert not folder.exists()  # gunicorn's on_exit removed the folder serve made


def test_the_cli_does_not_load_prometheus_client() -> None:
    """Else every ingest-api command would write metric files into the folder of a
    running API (or fail when PROMETHEUS_MULTIPROC_DIR names none yet)."""
    code = "import sys, ingest_api.cli; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
