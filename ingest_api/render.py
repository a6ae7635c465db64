"""Campaign templates: Jinja2 in a sandbox that refuses undefined variables.

Templates come from tenants, so they are compiled by Jinja2's
``SandboxedEnvironment`` (no access to ``__class__``, ``__globals__`` and the
like; a violation is a ``SecurityError``, reported like any other render error)
with ``StrictUndefined`` (a missing variable is an error naming it, never an
empty string in a sent mail). Only the html template is autoescaped.

Jinja2's sandbox guards attribute access, not resource use, and rendering runs
in an API request thread. So rendering also has a :class:`RenderBudget` (a
deadline and a number of characters for the whole request), checked on every
loop iteration, intercepted operator, call and output chunk, and the cheap ways
to build a huge value in one step are refused: repeating strings or lists,
large exponents, padding and indentation widths, printing or joining deeply
shared containers, and values or buffers larger than :data:`MAX_VALUE_CHARS`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_VALUE_CHARS = 1_000_000  # one string, list or buffer built while rendering; one field
MAX_WIDTH = 10_000  # padding, indentation and wrapping widths; format widths
MAX_PRINTED_ITEMS = 100_000  # elements (counted with repeats) of a value turned into text
MAX_INT_BITS = 100_000  # integers a template may compute
MAX_EXPONENT = 1000
TICK_EVERY = 256  # loop iterations between two deadline checks

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
    """Raised inside a template when the deadline has passed (becomes BudgetExhausted)."""


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


def _refuse(message: str) -> SecurityError:
    return SecurityError(message)


def _check_printable(value: Any) -> None:
    """Refuse to turn a container into text when that text would be enormous."""
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        return
    stack: list[Any] = [value]
    seen = 0
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        seen += 1
        if seen > MAX_PRINTED_ITEMS:
            raise _refuse(f"a value with more than {MAX_PRINTED_ITEMS} elements cannot be printed")


def _check_length(length: int) -> None:
    if length > MAX_VALUE_CHARS:
        raise _refuse(f"a value longer than {MAX_VALUE_CHARS} cannot be built")


def _check_size(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple):
        _check_length(len(value))
    return value


def _check_widths(*numbers: Any) -> None:
    for number in numbers:
        if isinstance(number, int) and number > MAX_WIDTH:
            raise _refuse(f"widths and counts above {MAX_WIDTH} are not allowed")


_PERCENT_SPEC = re.compile(r"%[^a-zA-Z%]*")
_BRACE_SPEC = re.compile(r"\{[^{}]*:([^{}]*)(\{)?")
_DIGITS = re.compile(r"\d+")


def _check_format_string(fmt: str, args: Any, *, braces: bool) -> None:
    """Widths in ``"%10s"`` or ``"{:>10}"`` formats, and ``*`` widths, stay small."""
    specs = (
        [m.group(1) + (m.group(2) or "") for m in _BRACE_SPEC.finditer(fmt)]
        if braces
        else [m.group(0) for m in _PERCENT_SPEC.finditer(fmt)]
    )
    for spec in specs:
        if "{" in spec:
            raise _refuse("nested format fields are not allowed")
        _check_widths(*(int(digits) for digits in _DIGITS.findall(spec)))
        if "*" in spec and not braces:
            _check_widths(*(args if isinstance(args, tuple) else (args,)))
    _check_printable(args)


class _Guarded(SandboxedEnvironment):
    """The sandbox, plus the resource guards described in the module docstring."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            finalize=_finalize,
        )
        self.concat = _guarded_concat  # type: ignore[method-assign]
        self.filters["_mailroom_loop"] = _loop_guard
        self.filters["_mailroom_printable"] = _printable
        self.filters["_mailroom_sized"] = _check_size
        for name in ("center", "wordwrap", "batch", "slice"):
            self.filters[name] = _width_guarded(self.filters[name])
        self.filters["indent"] = _indent_guarded(self.filters["indent"])
        for name in ("join", "string", "tojson", "pprint"):
            self.filters[name] = _printable_guarded(self.filters[name])
        self.filters["replace"] = _replace_guarded(self.filters["replace"])
        self.filters["format"] = _format_guarded(self.filters["format"])

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, list | tuple) and isinstance(count, int):
                    raise _refuse("repeating lists is not allowed")
                if isinstance(seq, str | bytes) and isinstance(count, int):
                    _check_length(len(seq) * count)
            integers = isinstance(left, int) and isinstance(right, int)
            if integers and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _refuse("the number is too large")
        elif operator == "**":
            numbers = isinstance(left, int | float) and isinstance(right, int | float)
            if numbers and abs(right) > MAX_EXPONENT and abs(left) > 1:
                raise _refuse(f"exponents above {MAX_EXPONENT} are not allowed")
        elif operator == "+":
            sized = (str, bytes, list, tuple)
            if isinstance(left, sized) and isinstance(right, sized):
                _check_length(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _check_format_string(left, right, braces=False)
        return _check_size(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str | bytes):
            if name in {"ljust", "rjust", "center", "zfill", "expandtabs"}:
                _check_widths(*args, *kwargs.values())
            elif name == "replace" and len(args) >= 2:
                _check_length(owner.count(args[0]) * len(args[1]) + len(owner))
            elif name == "join" and args:
                _check_printable(args[0])
        return _check_size(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_string(value.__self__, (), braces=True)
        return wrapped


def _finalize(value: Any) -> Any:
    _tick()
    _check_printable(value)
    return value


def _guarded_concat(parts: Iterable[str]) -> str:
    _tick()
    collected = list(parts)
    if sum(len(part) for part in collected) > MAX_VALUE_CHARS:
        raise _refuse(f"a value longer than {MAX_VALUE_CHARS} cannot be built")
    return "".join(collected)


@pass_context
def _loop_guard(_context: Context, iterable: Any) -> Iterator[Any]:
    """Wraps every ``{% for %}`` iterable: the deadline is checked while looping."""
    for count, item in enumerate(iterable):
        if count % TICK_EVERY == 0:
            _tick()
        yield item


@pass_context
def _printable(_context: Context, value: Any) -> Any:
    """Wraps every part of a ``~`` concatenation."""
    _check_printable(value)
    return value


def _width_guarded(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(filter_function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_widths(*args[1:], *kwargs.values())
        return filter_function(*args, **kwargs)

    return guarded


def _indent_guarded(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(filter_function)
    def guarded(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        _tick()
        prefix = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _check_length(len(str(value)) + prefix * (str(value).count("\n") + 1))
        return filter_function(value, width, *args, **kwargs)

    return guarded


def _printable_guarded(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(filter_function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        for value in (*args, *kwargs.values()):
            _check_printable(value)
        return _check_size(filter_function(*args, **kwargs))

    return guarded


def _replace_guarded(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(filter_function)
    def guarded(eval_ctx: Any, value: Any, old: Any, new: Any, *rest: Any) -> Any:
        _tick()
        text, old_text, new_text = str(value), str(old), str(new)
        _check_length(text.count(old_text) * len(new_text) + len(text))
        return filter_function(eval_ctx, value, old, new, *rest)

    return guarded


def _format_guarded(filter_function: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(filter_function)
    def guarded(value: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_format_string(str(value), args or kwargs, braces=False)
        return filter_function(value, *args, **kwargs)

    return guarded


class _AddGuards(NodeTransformer):
    """Route every loop and every ``~`` concatenation through the guard filters."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        loop = cast(nodes.For, self.generic_visit(node))
        loop.iter = _filter(loop.iter, "_mailroom_loop")
        return loop

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        concat = cast(nodes.Concat, self.generic_visit(node))
        concat.nodes = [_filter(part, "_mailroom_printable") for part in concat.nodes]
        return _filter(concat, "_mailroom_sized")


def _filter(node: nodes.Node, name: str) -> nodes.Filter:
    wrapped = nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)
    assert node.environment is not None  # parse() sets it on every node
    wrapped.set_environment(node.environment)
    return wrapped


_PLAIN = _Guarded(autoescape=False)
_HTML = _Guarded(autoescape=True)


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> Any:
    """A compiled template (cached by source); raises TemplateSyntaxError."""
    environment = _HTML if html else _PLAIN
    tree = environment.parse(source)
    return environment.from_string(_AddGuards().visit(tree))


def syntax_error(source: str, *, html: bool = False) -> str | None:
    """Why *source* is not a valid template, or None."""
    try:
        _compile(source, html)
    except TemplateSyntaxError as exc:
        return f"{exc.message} (line {exc.lineno})"
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


def render_template(
    name: str, source: str, context: Mapping[str, Any], budget: RenderBudget
) -> str:
    """Render one template; raises RenderError naming *name* with Jinja's reason."""
    token = _budget.set(budget)
    try:
        template = _compile(source, name == "html")
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            budget.tick()
            size += len(chunk)
            if size > MAX_VALUE_CHARS:
                raise RenderError(name, f"renders to more than {MAX_VALUE_CHARS} characters")
            parts.append(chunk)
        budget.spend(name, size)
        return "".join(parts)
    except RenderError:
        raise
    except _OutOfTime:
        raise BudgetExhausted(
            name, f"rendering took longer than {budget.seconds:g} s; send fewer at once"
        ) from None
    except TemplateSyntaxError as exc:
        raise RenderError(name, f"{exc.message} (line {exc.lineno})") from None
    except TemplateError as exc:  # UndefinedError, SecurityError, TemplateRuntimeError
        raise RenderError(name, exc.message or type(exc).__name__) from None
    except Exception as exc:  # the template's own doing: 1/0, "a" + 1, recursion, ...
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
