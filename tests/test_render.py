"""Campaign rendering: the sandbox, strict undefined variables, and the resource guards."""

from __future__ import annotations

import time

import pytest

from ingest_api.render import (
    BudgetExhausted,
    RenderBudget,
    RenderError,
    render_campaign,
    render_template,
    syntax_errors,
)


def render(source: str, html: bool = False, seconds: float = 2.0, **context: object) -> str:
    name = "html" if html else "text"
    return render_template(name, source, context, RenderBudget(seconds, 10_000_000))


def refused(source: str, **context: object) -> str:
    with pytest.raises(RenderError) as caught:
        render(source, **context)
    return caught.value.message


def test_variables_filters_loops_and_autoescape_in_html_only() -> None:
    source = "{% for i in items %}{{ loop.index }}={{ i|upper }};{% endfor %} {{ name }}"
    assert render(source, items=["a", "b"], name="<b>") == "1=A;2=B; <b>"
    assert render("{{ name }}", html=True, name="<b>") == "&lt;b&gt;"
    assert render("{{ '{:,}'.format(n) }} {{ '%.1f' % x }}", n=1234567, x=2.25) == "1,234,567 2.2"


def test_an_undefined_variable_is_an_error_naming_it() -> None:
    assert refused("Hi {{ first_name }}") == "'first_name' is undefined"
    assert "has no attribute 'x'" in refused("{{ user.x }}", user={})
    assert refused("{{ 1 / 0 }}") == "ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ ().__class__.__bases__[0] }}",
    ],
)
def test_the_sandbox_refuses_internals(source: str) -> None:
    message = refused(source)
    assert "unsafe" in message or "undefined" in message


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ 'x' * 1000000000 }}", "cannot be built"),
        ("{{ [1] * 10 }}", "repeating lists"),
        ("{{ 2 ** 100000 }}", "exponents"),
        ("{{ ''.ljust(1000000000) }}", "widths"),
        ("{{ ''|center(1000000000) }}", "widths"),
        ("{{ '%999999999s' % 1 }}", "widths"),
        ("{{ '{:>999999999}'.format(1) }}", "widths"),
        ("{{ '{0:{1}}'.format(1, 2) }}", "nested"),
        ("{% set a = 'x' * 900000 %}{{ a ~ a }}", "cannot be built"),
        (
            "{% set a = 'x' * 900000 %}{% set b %}{{ a }}{{ a }}{% endset %}{{ b }}",
            "cannot be built",
        ),
        ("{{ 'aaaa'|replace('a', 'x' * 900000) }}", "cannot be built"),
        ("{{ ('\\n' * 900000)|indent('x' * 10000) }}", "cannot be built"),
        (
            "{% set ns = namespace(l=[]) %}{% for i in range(100) %}"
            "{% set ns.l = ns.l + [ns.l] %}{% endfor %}{{ ns.l }}",
            "cannot be printed",
        ),
    ],
)
def test_values_that_would_exhaust_memory_are_refused(source: str, reason: str) -> None:
    assert reason in refused(source)


def test_the_deadline_stops_long_loops() -> None:
    started = time.monotonic()
    source = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(BudgetExhausted, match="longer than 0.2 s"):
        render(source, seconds=0.2)
    assert time.monotonic() - started < 2


def test_the_character_budget_is_shared_by_all_renders() -> None:
    budget = RenderBudget(5.0, 25)
    render_template("text", "{{ 'x' * 20 }}", {}, budget)
    with pytest.raises(BudgetExhausted, match="too large"):
        render_template("text", "{{ 'x' * 20 }}", {}, budget)


def test_syntax_errors_name_each_template() -> None:
    campaign = {
        "from": "a@example.com",
        "subject": "{{ x",
        "text": "fine",
        "html": "{% if %}",
        "headers": {"X-A": "{{ y|nope }}", "X-B": "ok"},
    }
    errors = syntax_errors(campaign)
    assert sorted(errors) == ["headers.X-A", "html", "subject"]
    assert "line 1" in errors["subject"][0]
    assert "No filter named 'nope'" in errors["headers.X-A"][0]


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
