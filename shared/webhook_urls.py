"""Webhook URLs: one normal form, and the addresses a webhook may never reach.

The API normalises a URL and checks where it resolves before storing it; the worker
does both again before each delivery (a stored URL may predate these rules, and DNS
may have changed since), then connects to an address it checked, so a name that
re-resolves elsewhere between the check and the connection (DNS rebinding) cannot
send the POST to a private service.

Blocked unless the operator allows them (``MAILROOM_WEBHOOK_ALLOW_NETWORKS``):
loopback, private, link-local, shared (CGNAT 100.64.0.0/10), multicast, unspecified
and reserved addresses, and IPv6 forms that embed a blocked IPv4 address
(IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``). Host names, and numeric forms such as ``0x7f000001``, ``2130706433``,
``127.1`` or ``0177.0.0.1``, are resolved with :func:`socket.getaddrinfo` (which reads
numeric forms as ``inet_aton`` does) and every address it returns must pass.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import idna

from shared.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_CHARACTERS = frozenset(string.ascii_lowercase + string.digits + "-._")
# What may stay as it is in a path or query: RFC 3986 unreserved and sub-delims, ":",
# "@", "/", "?" and "%" (an escape already made is kept, so normalising is idempotent).
_SAFE_IN_PATH = "/:@!$&'()*+,;=-._~%"
_SAFE_IN_QUERY = _SAFE_IN_PATH + "?"

_SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")  # CGNAT, RFC 6598
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(ValueError):
    """The host resolves to an address webhooks may not reach: never worth a retry."""


class HostUnresolvable(ValueError):
    """The host does not resolve (now): at delivery, a failure like any other, retried."""


@dataclass(frozen=True)
class WebhookTarget:
    """A normalised webhook URL, taken apart for the connection."""

    scheme: str  # "http" or "https"
    host: str  # lower-case ASCII (IDNA); an IPv6 address without brackets
    port: int
    path: str  # the request target: path and query, never empty

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def parse(url: str) -> WebhookTarget:
    """Normalise *url* and take it apart; ValueError with a client-facing message."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError("an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        # Credentials in the URL would end up in logs and in the delivery list.
        raise ValueError("no user:password@ in the URL; check the X-Mailroom-Signature instead")
    if parts.fragment or "#" in url:
        raise ValueError("no fragment (#...)")
    if port == 0:
        raise ValueError("port 0 cannot be reached")
    path = quote(parts.path, safe=_SAFE_IN_PATH) or "/"
    query = quote(parts.query, safe=_SAFE_IN_QUERY)
    return WebhookTarget(
        scheme=scheme,
        host=_normal_host(parts.hostname, bracketed=parts.netloc.startswith("[")),
        port=port or DEFAULT_PORTS[scheme],
        path=f"{path}?{query}" if query else path,
    )


def normalise(url: str) -> str:
    """The form a webhook URL is stored and called in: scheme and host lower-case, the host
    IDNA-encoded, non-ASCII in path and query percent-encoded, the default port left out.
    Raises ValueError with a client-facing message for a URL that cannot be sent."""
    return parse(url).url


def _normal_host(host: str, *, bracketed: bool) -> str:
    if bracketed:
        if "%" in host:
            raise ValueError("no IPv6 zone (%...) in the host")
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError("the host in [...] is not an IPv6 address") from None
    if host.isascii():
        ascii_host = host  # urlsplit has lower-cased it; digits stay as written (0x7f000001)
    else:
        try:
            ascii_host = ".".join(
                idna.encode(label, uts46=True).decode("ascii") if label else ""
                for label in host.split(".")
            )
        except idna.IDNAError as exc:
            raise ValueError(f"the host is not a valid international domain name: {exc}") from None
    labels = ascii_host.removesuffix(".").split(".")
    if not all(labels) or not set(ascii_host) <= _HOST_CHARACTERS or len(ascii_host) > 253:
        raise ValueError("the host is not a valid domain name or IP address")
    return ascii_host


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 address reaches."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why webhooks may not reach *address* ("loopback", "private"...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = blocked_reason(embedded)
            if reason is not None:
                return f"{reason} (embedded IPv4 {embedded})"
            if address.ipv4_mapped is not None or address in _NAT64:
                return None  # reaches that public IPv4 address, as the plain form would
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared (CGNAT)", address in _SHARED_ADDRESS_SPACE),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("non-global", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _allowed(address: IPAddress, allow_networks: Iterable[IPNetwork]) -> bool:
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        forms += [embedded] if embedded is not None else []
    return any(form in network for form in forms for network in allow_networks)


def resolve_allowed(host: str, port: int, allow_networks: Iterable[IPNetwork]) -> list[IPAddress]:
    """Every address *host* resolves to, in the resolver's order, if each one may be
    reached; AddressRefused if any may not, HostUnresolvable if there is none."""
    allow = tuple(allow_networks)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise HostUnresolvable(f"{host} does not resolve: {why}") from None
    addresses: list[IPAddress] = []
    for family, *_rest, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        reason = blocked_reason(address)
        if reason is not None and not _allowed(address, allow):
            raise AddressRefused(f"{host} resolves to a {reason} address {address}")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostUnresolvable(f"{host} does not resolve to an IP address")
    return addresses
