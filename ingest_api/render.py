"""Campaign templates: Liquid (python-liquid) with its resource limits and strict variables.

Templates come from tenants. Liquid has no attribute or method access to abuse,
only tags and filters, and python-liquid bounds loop iterations, output size,
the size of assigned variables and context depth (the ``MAX_*`` constants
below). Variables are strict (a missing variable is an error naming it, never
an empty string in a sent mail; ``default`` still gives its fallback), filters
must exist, ``include`` and ``render`` find no template (there is no loader),
and only the html template is autoescaped.

The library's limits leave three ways to spend memory or time, closed here:
filters build their result before the output limit sees it (``replace`` and
``join`` multiply sizes), a range literal such as ``(1..1000000000)`` costs
nothing until a filter or a loop ``offset`` walks it, and the library measures
assigned variables with ``sys.getsizeof``, which sees a list of a thousand
references to one long string as small. So every filter's arguments and result
are measured as printed (:func:`_printed_size`), and so are assigned variables.

Rendering runs in an API request thread, so a :class:`RenderBudget` (a deadline
and a number of characters for the whole request) is checked on every filter
call, loop start and assignment, and between templates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from io import StringIO
from typing import Any, TextIO

from liquid import (
    BoundTemplate,
    DictLoader,
    Environment,
    RenderContext,
    StrictDefaultUndefined,
    Undefined,
)
from liquid.exceptions import (
    ContextDepthError,
    LiquidError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    ResourceLimitError,
    TemplateNotFoundError,
)
from liquid.output import LimitedStringIO
from liquid.parser import get_parser
from liquid.stream import TokenStream

# Per rendered template (one field for one recipient). Liquid enforces the first four.
MAX_LOOP_ITERATIONS = 10_000  # all iterations of nested loops multiplied; also how far a loop
#                               may skip with `offset`
MAX_OUTPUT_BYTES = 1_000_000  # UTF-8 bytes written, including {% capture %} buffers
MAX_LOCAL_NAMESPACE = 100_000  # characters and items of all {% assign %}/{% capture %} values
MAX_CONTEXT_DEPTH = 30  # nested scopes (loops inside loops, ...)
MAX_VALUE_SIZE = 1_000_000  # characters and items of a value a filter takes or returns

# What a campaign stores, by the API's field names; "headers" holds a template per header.
TEMPLATE_FIELDS = ("from", "subject", "text", "html", "reply_to")


class RenderError(Exception):
    """A template cannot be rendered; ``field`` names the template ("subject", "headers.X-A")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class BudgetExhausted(RenderError):
    """The request's rendering budget is spent: rendering more would be refused too."""


class _OutOfTime(Exception):
    """Raised inside a template when the deadline has passed (becomes BudgetExhausted).

    Not a LiquidError, so no tag or filter of the library turns it into something else.
    """


class _ValueTooLarge(ResourceLimitError):
    """A filter was given or built a value larger than :data:`MAX_VALUE_SIZE`."""


@dataclass
class RenderBudget:
    """Time and characters one request may spend rendering, over all its templates."""

    seconds: float
    max_chars: int
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _OutOfTime

    def spend(self, field_name: str, chars: int) -> None:
        self.max_chars -= chars
        if self.max_chars < 0:
            raise BudgetExhausted(
                field_name, "the rendered mails are too large together; send fewer at once"
            )


_budget: ContextVar[RenderBudget | None] = ContextVar("render_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _printed_size(value: object, limit: int) -> int:
    """Characters and items *value* takes when printed or joined; counting stops past *limit*.

    A value shared by reference counts every time it appears, as printing repeats it.
    """
    size = 0
    pending = [value]
    while pending and size <= limit:
        item = pending.pop()
        # First, by type(): isinstance() would ask a strict undefined its __class__, and fail.
        if issubclass(type(item), Undefined):
            size += 1
        elif isinstance(item, str):
            size += len(item)
        elif isinstance(item, range):  # only Liquid's (a..b): step 1
            size += max(item.stop - item.start, 0)
        elif isinstance(item, Mapping | list | tuple | set | frozenset):
            size += len(item)
            if size <= limit:
                pending.extend(item.items() if isinstance(item, Mapping) else item)
        elif isinstance(item, int):
            size += item.bit_length() // 3 + 1  # about its decimal digits
        else:
            size += 1
    return size


def _check_value(filter_name: str, value: object, extra: int = 0) -> None:
    if _printed_size(value, MAX_VALUE_SIZE) + extra > MAX_VALUE_SIZE:
        raise _ValueTooLarge(
            f"{filter_name}: values larger than {MAX_VALUE_SIZE} characters or items"
            " cannot be filtered",
            token=None,
        )


def _join_growth(left: object, separator: object = " ", *_: object) -> int:
    return len(str(separator)) * len(left) if isinstance(left, list | tuple | range) else 0


def _replace_growth(left: object, old: object = "", new: object = "", *_: object) -> int:
    return str(left).count(str(old)) * len(str(new))


# Filters whose result can be much larger than their arguments: the growth, before building it.
_GROWTH: dict[str, Callable[..., int]] = {"join": _join_growth, "replace": _replace_growth}


def _guarded(name: str, filter_function: Callable[..., Any]) -> Callable[..., Any]:
    growth = _GROWTH.get(name)

    @wraps(filter_function)  # keeps the library's with_context/with_environment markers
    def guarded(left: object, *args: object, **kwargs: object) -> object:
        _tick()
        for value in (left, *args):
            _check_value(name, value)
        if growth is not None:
            _check_value(name, left, growth(left, *args))
        result = filter_function(left, *args, **kwargs)
        _check_value(name, result)
        return result

    return guarded


class _Context(RenderContext):
    """Measures assigned variables as printed, and checks the deadline on loops and assigns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_sizes: dict[str, int] = {}

    def assign(self, key: str, val: Any) -> None:
        _tick()
        self._local_sizes[key] = _printed_size(val, MAX_LOCAL_NAMESPACE)
        super().assign(key, val)  # stores it, then compares get_size_of_locals() to the limit

    def get_size_of_locals(self) -> int:
        return sum(self._local_sizes.values()) + self.local_namespace_size_carry

    def raise_for_loop_limit(self, length: int = 1) -> None:
        _tick()
        super().raise_for_loop_limit(length)

    def get_buffer(self, buf: TextIO | None = None) -> StringIO:
        """A {% capture %} buffer: the output limit, carried over, without newline changes."""
        return _buffer(MAX_OUTPUT_BYTES - (buf.size if isinstance(buf, LimitedStringIO) else 0))

    def stopindex(self, key: str, index: int | None = None) -> int:
        # Every for/tablerow loop reports where its slice ends before walking to it
        # (`offset` walks item by item): bound that, not only the iterations left.
        if index is not None and index > MAX_LOOP_ITERATIONS:
            raise LoopIterationLimitError("loop iteration limit reached", token=None)
        return super().stopindex(key, index)


def _buffer(limit: int) -> LimitedStringIO:
    # newline="": python-liquid's own limited buffers translate "\r" and "\r\n" to "\n".
    return LimitedStringIO(limit, newline="")


class _Liquid(Environment):
    loop_iteration_limit = MAX_LOOP_ITERATIONS
    output_stream_limit = MAX_OUTPUT_BYTES
    local_namespace_limit = MAX_LOCAL_NAMESPACE
    context_depth_limit = MAX_CONTEXT_DEPTH

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictDefaultUndefined,
            strict_filters=True,
            loader=DictLoader({}),  # no template to include or render, ever
        )
        self.filters = {name: _guarded(name, f) for name, f in self.filters.items()}


_PLAIN = _Liquid(autoescape=False)
_HTML = _Liquid(autoescape=True)


class _SyntaxError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _line(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> BoundTemplate:
    """A parsed template (cached by source); raises _SyntaxError naming the line."""
    environment = _HTML if html else _PLAIN
    # Parsed here rather than by from_string() to see where the parser stopped: errors
    # inside {{ }} or at the end of the template come without a position of their own.
    stream = TokenStream(iter(()))
    try:
        stream = TokenStream(environment.tokenizer()(source))
        nodes = get_parser(environment).parse(stream)
    except LiquidError as exc:
        token = exc.token if exc.token and exc.token.start_index >= 0 else stream.current
        index = token.start_index if token.start_index >= 0 else len(source)
        raise _SyntaxError(f"{exc.message} (line {_line(source, index)})") from None
    template = environment.template_class(
        environment, name="", path=None, nodes=nodes, globals=environment.make_globals(None)
    )
    # Liquid looks filters up while rendering; report unknown ones now, like syntax errors.
    for name, spans in template.analyze(include_partials=False).filters.items():
        if name not in environment.filters:
            line = _line(source, min(span.index for span in spans))
            raise _SyntaxError(f"unknown filter '{name}' (line {line})")
    return template


def syntax_error(source: str, *, html: bool = False) -> str | None:
    """Why *source* is not a valid template, or None."""
    try:
        _compile(source, html)
    except _SyntaxError as exc:
        return exc.message
    return None


def template_fields(campaign: Mapping[str, Any]) -> dict[str, str]:
    """A campaign's templates by field name (API names), leaving out absent ones."""
    sources = {name: campaign.get(name) for name in TEMPLATE_FIELDS}
    for header, value in (campaign.get("headers") or {}).items():
        sources[f"headers.{header}"] = value
    return {name: source for name, source in sources.items() if source is not None}


def syntax_errors(campaign: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{field: [error]}`` for every template of *campaign* that does not compile."""
    errors: dict[str, list[str]] = {}
    for name, source in template_fields(campaign).items():
        error = syntax_error(source, html=name == "html")
        if error is not None:
            errors[name] = [error]
    return errors


# What a client can change when a limit stops a template, by the library's error.
_LIMITS: dict[type[LiquidError], str] = {
    LoopIterationLimitError: f"at most {MAX_LOOP_ITERATIONS} loop iterations per template,"
    " nested loops multiplied",
    OutputStreamLimitError: f"at most {MAX_OUTPUT_BYTES} bytes per template",
    LocalNamespaceLimitError: f"at most {MAX_LOCAL_NAMESPACE} characters in assigned variables",
    ContextDepthError: f"at most {MAX_CONTEXT_DEPTH} nested blocks",
}


def _reason(exc: LiquidError) -> str:
    if isinstance(exc, TemplateNotFoundError):
        return "include and render are not available: a campaign cannot load other templates"
    limit = _LIMITS.get(type(exc))
    return f"{exc.message} ({limit})" if limit else str(exc.message)


def render_template(
    name: str, source: str, context: Mapping[str, Any], budget: RenderBudget
) -> str:
    """Render one template; raises RenderError naming *name* with Liquid's reason."""
    token = _budget.set(budget)
    try:
        budget.tick()
        template = _compile(source, name == "html")
        buffer = _buffer(MAX_OUTPUT_BYTES)
        template.render_with_context(
            _Context(template, globals=template.make_globals(context)), buffer
        )
        text = buffer.getvalue()
        budget.spend(name, len(text))
        return text
    except RenderError:
        raise
    except _OutOfTime:
        raise BudgetExhausted(
            name, f"rendering took longer than {budget.seconds:g} s; send fewer at once"
        ) from None
    except _SyntaxError as exc:
        raise RenderError(name, exc.message) from None
    except LiquidError as exc:  # undefined variables, filter errors, limits
        raise RenderError(name, _reason(exc)) from None
    except Exception as exc:  # the template's own doing that Liquid does not wrap
        raise RenderError(name, f"{type(exc).__name__}: {exc}") from None
    finally:
        _budget.reset(token)


def render_campaign(
    campaign: Mapping[str, Any], context: Mapping[str, Any], budget: RenderBudget
) -> dict[str, Any]:
    """Every template of *campaign* rendered: ``{"from", "subject", ..., "headers": {...}}``.

    Raises RenderError for the first template that fails.
    """
    rendered: dict[str, Any] = {"headers": {}}
    for name, source in template_fields(campaign).items():
        text = render_template(name, source, context, budget)
        if name.startswith("headers."):
            rendered["headers"][name.removeprefix("headers.")] = text
        else:
            rendered[name] = text
    return rendered
