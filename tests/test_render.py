"""Campaign rendering with Liquid: strict variables, autoescaping, no loader, resource limits."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import psycopg
import pytest
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import escape

from ingest_api.render import (
    MAX_LOOP_ITERATIONS,
    BudgetExhausted,
    RenderBudget,
    RenderError,
    render_campaign,
    render_template,
    syntax_errors,
)
from tests.conftest import TenantKey
from tests.test_api import counts
from tests.test_api_mails import post
from tests.test_campaigns import create

MAX_PEAK_BYTES = 100 * 1024 * 1024  # a bound on what a refused template may allocate


def render(source: str, html: bool = False, seconds: float = 5.0, **context: object) -> str:
    name = "html" if html else "text"
    return render_template(name, source, context, RenderBudget(seconds, 10_000_000))


def refused(source: str, **context: object) -> str:
    with pytest.raises(RenderError) as caught:
        render(source, **context)
    return caught.value.message


def test_variables_filters_loops_and_conditions() -> None:
    source = (
        "{% for i in items %}{{ forloop.index }}={{ i | upcase }};{% endfor %}"
        ' {{ first_name | default: "there" }}{% if plan == "pro" %}, pro{% endif %}'
    )
    assert render(source, items=["a", "b"], plan="pro") == "1=A;2=B; there, pro"
    assert render(source, items=[], first_name="Ann", plan="free") == " Ann"
    assert render("{{ n | times: 2 }} {{ x | round: 1 }}", n=21, x=2.75) == "42 2.8"


def test_html_is_autoescaped_and_other_templates_are_not() -> None:
    assert render("{{ name }} {{ items | join: ', ' }}", html=True, name="<b>", items=["<i>"]) == (
        "&lt;b&gt; &lt;i&gt;"
    )
    assert render("<p>{{ name }}</p>", name="<b>") == "<p><b></p>"
    campaign = {"subject": "{{ n }}", "text": "{{ n }}", "html": "{{ n }}", "headers": {}}
    rendered = render_campaign(campaign, {"n": "a&b"}, RenderBudget(1, 1000))
    assert (rendered["subject"], rendered["text"], rendered["html"]) == ("a&b", "a&b", "a&amp;b")


@given(st.text())
def test_a_value_is_printed_as_is_and_escaped_only_in_html(value: str) -> None:
    assert render("{{ v }}", v=value) == value
    assert render("{{ v }}", html=True, v=value) == str(escape(value))


def test_an_undefined_variable_is_an_error_naming_it() -> None:
    assert refused("Hi {{ first_name }}") == "'first_name' is undefined"
    assert refused("{{ user.x }}", user={}) == "user.x is undefined"
    assert refused("{% if plan == 'pro' %}x{% endif %}") == "'plan' is undefined"
    assert "divide by 0" in refused("{{ 1 | divided_by: 0 }}")


def test_include_and_render_load_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.liquid"
    secret.write_text("the secret")
    monkeypatch.chdir(tmp_path)
    for source in (
        "{% include 'secret.liquid' %}",
        f"{{% include '{secret}' %}}",
        "{% render 'secret.liquid' %}",
        "{% render 'secret' %}",
    ):
        assert "cannot load other templates" in refused(source)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        # the library's limits
        ("{% for i in (1..100000000) %}x{% endfor %}", "loop iteration limit"),
        ("{% for i in (1..1000) %}{% for j in (1..1000) %}{% endfor %}{% endfor %}", "loop"),
        (
            '{% assign s = "x" %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}',
            "local namespace limit",
        ),
        (
            "{% capture c %}{% for i in (1..10000) %}{{ x }}{% endfor %}{% endcapture %}",
            "output stream limit",
        ),
        ("{% for i in (1..10000) %}{{ x }}{% endfor %}", "output stream limit"),
        # what the library's limits miss: results built before any limit sees them ...
        (
            '{% assign s = "xxxxxxxxxx" %}{% for i in (1..10) %}{% assign s = s | append: s %}'
            '{% endfor %}{{ s | replace: "x", s | size }}',
            "replace: values larger than",
        ),
        (
            '{% assign s = "xxxxxxxxxx" %}{% for i in (1..10) %}{% assign s = s | append: s %}'
            '{% endfor %}{{ s | split: "" | join: s | size }}',
            "join: values larger than",
        ),
        # ... ranges that cost nothing until a filter or an offset walks them ...
        ("{{ (1..30000000) | join: ',' | size }}", "join: values larger than"),
        ("{{ (1..30000000) | reverse | first }}", "reverse: values larger than"),
        (
            "{% for i in (1..100000000000000000) offset: 99999999999999998 %}{{ i }}{% endfor %}",
            "loop iteration limit",
        ),
        ("{% for i in (1..30000000) reversed %}{% break %}{% endfor %}", "loop iteration limit"),
        ("{% assign r = (1..30000000) %}{{ r | size }}", "local namespace limit"),
        # ... and a list of references to one string, small for sys.getsizeof
        (
            '{% assign s = "xxxxxxxxxx" %}{% for i in (1..12) %}{% assign s = s | append: s %}'
            '{% endfor %}{% assign l = s | split: "," %}'
            "{% for i in (1..12) %}{% assign l = l | concat: l %}{% endfor %}{{ l | size }}",
            "local namespace limit",
        ),
    ],
)
def test_templates_that_would_exhaust_memory_or_time_are_refused(source: str, reason: str) -> None:
    tracemalloc.start()
    try:
        message = refused(source, x="x" * 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reason in message
    assert peak < MAX_PEAK_BYTES


def test_a_loop_may_not_reach_past_the_iteration_limit_even_with_offset() -> None:
    items = list(range(MAX_LOOP_ITERATIONS + 10))
    fits = "{% for i in items limit: 3 %}{{ i }}{% endfor %}"
    assert render(fits, items=items) == "012"
    beyond = "{% for i in items offset: 10001 limit: 3 %}{{ i }}{% endfor %}"
    assert "loop iteration limit" in refused(beyond, items=items)


def test_the_deadline_is_checked_while_a_template_renders() -> None:
    source = "{% for i in (1..10000) %}{{ big | upcase | size }}{% endfor %}"
    with pytest.raises(BudgetExhausted, match="longer than 0.2 s"):
        render(source, seconds=0.2, big="x" * 999_999)


def test_the_character_budget_is_shared_by_all_renders() -> None:
    budget = RenderBudget(5.0, 25)
    render_template("text", "{{ 'xxxxxxxxxxxxxxxxxxxx' }}", {}, budget)
    with pytest.raises(BudgetExhausted, match="too large"):
        render_template("text", "{{ 'xxxxxxxxxxxxxxxxxxxx' }}", {}, budget)


def test_syntax_errors_name_each_template_and_the_line() -> None:
    campaign = {
        "from": "a@example.com",
        "subject": "{{ x",
        "text": "fine {{ x | upcase }}",
        "html": "<p>\n{% if x %}\n<b>",
        "reply_to": "{% if %}",
        "headers": {"X-A": "{{ y | nope }}", "X-B": "ok", "X-C": "{{ }}"},
    }
    errors = syntax_errors(campaign)
    assert sorted(errors) == ["headers.X-A", "headers.X-C", "html", "reply_to", "subject"]
    assert errors["subject"] == ["expected '}}', found end of file (line 1)"]
    assert "endif" in errors["html"][0]
    assert "(line 3)" in errors["html"][0]
    assert errors["headers.X-A"] == ["unknown filter 'nope' (line 1)"]
    assert "(line 1)" in errors["headers.X-C"][0]
    assert errors["reply_to"] == ["missing expression (line 1)"]
    assert syntax_errors({"text": "a\nb\n{{ x | no_such }}"}) == {
        "text": ["unknown filter 'no_such' (line 3)"]
    }
    # errors inside {{ }} come without a position: the line is where the parser stopped
    assert syntax_errors({"text": "a\n{{ }}\nb\nc"}) == {
        "text": ["expected a primitive expression, found end of expression (line 2)"]
    }


def test_render_campaign_renders_every_field() -> None:
    campaign = {
        "from": "{{ team }} <a@example.com>",
        "subject": "Hi {{ n }}",
        "text": None,
        "html": "<p>{{ n }}</p>",
        "reply_to": None,
        "headers": {"X-N": "{{ n }}"},
    }
    rendered = render_campaign(campaign, {"n": "<Ann>", "team": "Acme"}, RenderBudget(1, 1000))
    assert rendered == {
        "from": "Acme <a@example.com>",
        "subject": "Hi <Ann>",
        "html": "<p>&lt;Ann&gt;</p>",
        "headers": {"X-N": "<Ann>"},
    }


# --- through the API ------------------------------------------------------------------

PREVIEW = {
    "recipient": {"email": "ann@example.org"},
    "data": {"first_name": "Ann", "plan": "free", "x": "x" * 1000},
}


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # the list, doubled 40 times, in Liquid
        (
            '{% assign s = "x" %}{% for i in (1..40) %}{% assign s = s | append: s %}'
            "{% endfor %}{{ s }}",
            "local namespace limit",
        ),
        ("{% for a in (1..100000) %}{% for b in (1..100000) %}{% endfor %}{% endfor %}", "loop"),
        ("{% for i in (1..100000000) %}{{ x }}{% endfor %}", "limit reached"),
        ("{{ (1..100000000) | join: ',' }}", "join: values larger than"),
        (
            '{% assign s = "xxxxxxxxxx" %}{% for i in (1..12) %}{% assign s = s | append: s %}'
            '{% endfor %}{{ s | replace: "x", s }}',
            "replace: values larger than",
        ),
    ],
)
def test_a_memory_bomb_previewed_is_a_422_naming_the_limit(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection, template: str, reason: str
) -> None:
    create(client, tenant, text=template)
    tracemalloc.start()
    try:
        response = post(client, tenant, PREVIEW, "/v1/campaigns/welcome/preview")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 422, response.get_json()
    errors = response.get_json()["errors"]
    assert list(errors) == ["text"]
    assert reason in errors["text"][0]
    assert peak < MAX_PEAK_BYTES
    assert counts(db) == (0, 0, 0)


def test_include_is_a_422_at_trigger_and_preview(
    client: FlaskClient, tenant: TenantKey, db: psycopg.Connection
) -> None:
    create(client, tenant, text="{% include 'README.md' %}")
    body = {"recipients": [{"email": "ann@example.org"}], "data": PREVIEW["data"]}
    for path, payload, field in (
        ("/v1/campaigns/welcome/trigger", body, "recipients.0.text"),
        ("/v1/campaigns/welcome/preview", PREVIEW, "text"),
    ):
        response = post(client, tenant, payload, path)
        assert response.status_code == 422, response.get_json()
        assert "cannot load other templates" in response.get_json()["errors"][field][0]
    assert counts(db) == (0, 0, 0)
