"""Bearer-key authentication: every /v1 request resolves to exactly one tenant.

Every request to a /v1 route is authenticated before its view runs (a
``before_request`` hook that :func:`init_app` installs), so no endpoint can
forget to, and a bad key is a 401 before the body is even validated; a /v1
blueprint that authenticates another way says so with
:func:`authenticated_otherwise`. The view
then asks :func:`current_tenant` for the tenant, or :func:`require_scope` when
the key must also carry a scope ('send', 'read'; 403 otherwise).

Right after a key is resolved it takes one token from its rate limit bucket
(:mod:`ingest_api.rate_limit`): over the limit is a 429. Doing this as part of
authentication means every request made with a key counts, whichever endpoint
it reaches and whether or not its body is valid, and every /v1 response to an
authenticated request carries the ``RateLimit-*`` headers.

Resolved keys (their tenant and scopes) are remembered per process for
``KEY_CACHE_SECONDS``, which saves a database round trip on every request; a
revoked key, or a change of scopes, therefore takes effect within that many seconds.
"""

from __future__ import annotations

import threading
import time
from typing import TypeVar

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.views import View

from ingest_api import db
from ingest_api.api_keys import key_digest
from ingest_api.errors import refuse
from ingest_api.rate_limit import Decision, RateLimiter
from shared.config import Settings
from shared.store.tenants import ApiKey, Tenant, find_api_key

CHALLENGE = {"WWW-Authenticate": "Bearer"}
KEY_CACHE_SECONDS = 10.0
KEY_CACHE_MAX_ENTRIES = 10_000


class KeyCache:
    """Known keys (by digest) with their tenants and scopes, each for a short while."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> ApiKey | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: bytes, api_key: ApiKey) -> None:
        with self._lock:
            if len(self._entries) >= KEY_CACHE_MAX_ENTRIES:
                self._entries.clear()  # bounded memory; a refill is cheap
            self._entries[digest] = (time.monotonic() + self.ttl, api_key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _bearer_key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        refuse(401, "send 'Authorization: Bearer <api key>'", headers=CHALLENGE)
    return key.strip()


def _look_up(digest: bytes) -> ApiKey:
    with db.connection() as conn:
        found = find_api_key(conn, digest)
    if found is None:
        refuse(401, "unknown or revoked API key", headers=CHALLENGE)
    return found


def _rate_limit(api_key: ApiKey) -> None:
    """Take this request's token; refuse with 429 when the key has none left."""
    limiter: RateLimiter | None = current_app.extensions.get("mailroom.rate_limiter")
    if limiter is None:
        return
    decision = limiter.take(api_key.id.hex)
    if decision is None:  # Redis failed: fail open, without headers
        return
    g.rate_limit = decision
    if not decision.allowed:
        refuse(
            429,
            f"rate limit exceeded for this API key ({limiter.rate:g} requests per second,"
            f" bursts of {limiter.burst}); retry in {decision.retry_after_seconds} s",
            headers=decision.headers(),
        )


def current_api_key() -> ApiKey:
    """The request's API key: resolved and rate limited once per request."""
    if "api_key" not in g:
        cache: KeyCache = current_app.extensions["mailroom.key_cache"]
        digest = key_digest(_bearer_key())
        api_key = cache.get(digest)
        if api_key is None:
            api_key = _look_up(digest)
            cache.put(digest, api_key)
        g.api_key = api_key
        _rate_limit(api_key)
    found: ApiKey = g.api_key
    return found


def current_tenant() -> Tenant:
    """The tenant of the request's API key."""
    return current_api_key().tenant


def require_scope(scope: str) -> Tenant:
    """The tenant of the request's API key, if the key carries *scope*; else 403."""
    api_key = current_api_key()
    if scope not in api_key.scopes:
        refuse(
            403,
            f"this API key lacks the {scope!r} scope"
            f" (it has: {', '.join(sorted(api_key.scopes)) or 'none'})",
        )
    return api_key.tenant


# Blueprints, and view classes, under /v1 whose requests prove who they are another
# way (a signed webhook, say): the before_request hook leaves them to their view.
_AUTHENTICATED_OTHERWISE: set[str] = set()
_VIEWS_AUTHENTICATED_OTHERWISE: set[type[View]] = set()

Exempted = TypeVar("Exempted", Blueprint, type[View])


def authenticated_otherwise(exempted: Exempted) -> Exempted:
    """Exempt a blueprint, or one view class (the signed POST of a path whose GET
    needs a key), from the API key every other /v1 route requires."""
    if isinstance(exempted, Blueprint):
        _AUTHENTICATED_OTHERWISE.add(exempted.name)
    else:
        _VIEWS_AUTHENTICATED_OTHERWISE.add(exempted)
    return exempted


def _exempted() -> bool:
    if request.blueprint in _AUTHENTICATED_OTHERWISE:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "view_class", None) in _VIEWS_AUTHENTICATED_OTHERWISE


def authenticate_api_request() -> None:
    """before_request: every /v1 route needs a valid API key (and a token)."""
    rule = request.url_rule
    if rule is not None and rule.rule.startswith("/v1/") and not _exempted():
        current_api_key()


def add_rate_limit_headers(response: Response) -> Response:
    """after_request: describe the key's bucket on every response it was checked for."""
    decision: Decision | None = g.get("rate_limit")
    if decision is not None:
        response.headers.update(decision.headers())
    return response


def init_app(app: Flask, settings: Settings) -> None:
    """The rate limiter (if configured) and the hooks that authenticate and limit.

    Call after the request-id hook, so refusals carry the request id.
    """
    app.extensions["mailroom.rate_limiter"] = RateLimiter.from_settings(settings)
    app.before_request(authenticate_api_request)
    app.after_request(add_rate_limit_headers)
