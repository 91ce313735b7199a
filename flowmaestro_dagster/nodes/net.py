"""Outbound HTTP from workflow nodes, behind an SSRF guard.

A workflow author chooses the URLs an HTTP node or a webhook connector calls, so a node must
not become a way into the platform's own network: loopback, private, link-local, unique-local,
multicast, unspecified and cloud-metadata addresses are refused unless `HttpSettings` allows
them (`allow_loopback`, `allow_private`, `allowed_hosts`).

The check happens where the socket is opened: `GuardedBackend` (an httpcore network backend)
resolves the host once, refuses the connection if *any* resolved address is blocked, and then
connects to exactly those checked addresses. There is no second DNS lookup between check and
connect, so DNS rebinding cannot slip a private address in; the URL, `Host` header, TLS SNI and
certificate check still use the hostname. Every redirect hop to a new origin opens a new
connection and is checked the same way. Environment proxies are ignored (`trust_env=False`):
a proxy would connect on our behalf, past the check.

Use `guarded_client(settings)` for any request whose URL comes from a workflow.
"""

import contextlib
import email.utils
import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpcore
import httpx

from flowmaestro_dagster.errors import FlowMaestroError
from flowmaestro_dagster.settings import HttpSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Category = Literal[
    "metadata",
    "unspecified",
    "loopback",
    "link-local",
    "multicast",
    "private",
    "unique-local",
    "shared",
    "reserved",
]

# Cloud instance-metadata endpoints: they hand out credentials, so no flag but an explicit
# `allowed_hosts` entry opens them (not even allow_private).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS resolver
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS ECS / EKS pod identity
    )
)
METADATA_HOSTNAMES: frozenset[str] = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: private in practice
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.x.x.x to the local host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_HOW_TO_ALLOW: dict[str, str] = {
    "loopback": "FLOWMAESTRO_HTTP__ALLOW_LOOPBACK=true",
    "private": "FLOWMAESTRO_HTTP__ALLOW_PRIVATE=true",
    "unique-local": "FLOWMAESTRO_HTTP__ALLOW_PRIVATE=true",
    "shared": "FLOWMAESTRO_HTTP__ALLOW_PRIVATE=true",
}


class BlockedAddressError(FlowMaestroError):
    """A request was refused by the SSRF guard (retrying cannot help)."""

    def __init__(self, host: str, reason: str, category: str | None = None) -> None:
        self.host = host
        self.category = category
        self.reason = reason
        super().__init__(f"request to '{host}' refused: {reason}")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> Category | None:
    """Why an address is not public (None when it is an ordinary global address)."""
    inner = _embedded_ipv4(address)
    if inner is not None:
        inner_category = classify(inner)
        if inner_category is not None:
            return inner_category
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _UNIQUE_LOCAL:
        return "unique-local"
    if address in _SHARED:
        return "shared"
    if isinstance(address, ipaddress.IPv4Address) and address.is_private:
        # 10/8, 172.16/12, 192.168/16, and the special-purpose blocks Python counts as private
        # (192.0.2/24 documentation, 198.18/15 benchmarking, ...): the latter are reserved.
        if any(address in n for n in _RFC1918):
            return "private"
        return "reserved"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class AddressPolicy:
    """What the guard lets through: built from `HttpSettings`."""

    allow_loopback: bool = False
    allow_private: bool = False
    allowed_names: frozenset[str] = frozenset()
    allowed_suffixes: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> "AddressPolicy":
        """`allowed_hosts` entries: a hostname, `*.example.internal`, an IP or a CIDR network."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in settings.allowed_hosts:
            entry = _normalise_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(
            allow_loopback=settings.allow_loopback,
            allow_private=settings.allow_private,
            allowed_names=frozenset(names),
            allowed_suffixes=tuple(suffixes),
            allowed_networks=tuple(networks),
        )

    def host_allowed(self, host: str) -> bool:
        """A hostname the operator allowed explicitly (whatever it resolves to)."""
        name = _normalise_host(host)
        return name in self.allowed_names or any(name.endswith(s) for s in self.allowed_suffixes)

    def refusal(self, address: IPAddress) -> tuple[Category, str] | None:
        """(category, reason) if connecting to this address is refused, else None."""
        category = classify(address)
        if category is None:
            return None
        if any(address.version == n.version and address in n for n in self.allowed_networks):
            return None
        if category == "loopback" and self.allow_loopback:
            return None
        if category in ("private", "unique-local", "shared") and self.allow_private:
            return None
        how = _HOW_TO_ALLOW.get(category, "list it in FLOWMAESTRO_HTTP__ALLOWED_HOSTS")
        return category, f"{address} is a {category} address (to allow it: {how})"

    def check_host(self, host: str) -> None:
        """Refuse metadata hostnames and IP literals without resolving anything."""
        name = _normalise_host(host)
        if not name:
            raise BlockedAddressError(host, "the URL has no host")
        if self.host_allowed(name):
            return
        if name in METADATA_HOSTNAMES:
            raise BlockedAddressError(host, "cloud metadata host", "metadata")
        with contextlib.suppress(ValueError):
            self._check_address(name, ipaddress.ip_address(name))

    def _check_address(self, host: str, address: IPAddress) -> None:
        refused = self.refusal(address)
        if refused is not None:
            category, reason = refused
            raise BlockedAddressError(host, reason, category)

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve `host` once and check every address; returns the addresses to connect to.

        Any blocked address refuses the whole host (a name that resolves to a public and a
        private address must not reach the private one on a retry).
        """
        self.check_host(host)
        name = _normalise_host(host)
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve '{host}': {exc}") from exc
        addresses: list[str] = []
        for info in infos:
            text = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
            address = ipaddress.ip_address(text)
            if not self.host_allowed(name):
                self._check_address(host, address)
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise httpcore.ConnectError(f"'{host}' has no address")
        return addresses


def check_url(url: str | httpx.URL, settings: HttpSettings) -> list[str]:
    """Check a URL before use (scheme, host, every resolved address); the addresses if allowed.

    `guarded_client` checks again at connect time; this is for an early, clear error (and for
    code that hands the URL to something other than httpx).
    """
    parsed = httpx.URL(str(url))
    if parsed.scheme not in ("http", "https"):
        raise BlockedAddressError(parsed.host or str(url), f"scheme '{parsed.scheme}' is not http")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return AddressPolicy.from_settings(settings).resolve(parsed.host, port)


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.NetworkBackend | None = None):
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.policy.resolve(host, port)
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Exception | None = None
        for address in addresses:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                # An IP literal: the inner backend connects without looking the name up again.
                return self.inner.connect_tcp(
                    address, port, remaining, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise BlockedAddressError(path, "unix sockets are not reachable from nodes")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


DEFAULT_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5)


class GuardedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` whose connections go through `GuardedBackend`, without proxies."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        verify: bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        ssl_context = default_ssl_context() if verify else httpx.create_ssl_context(verify=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # HTTPTransport keeps its httpcore pool in `_pool`; replace it with one whose network
        # backend is guarded (httpx has no public hook for the backend). tests/test_net.py
        # fails if this ever stops taking effect.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context per process: loading the CA bundle takes ~0.1 s."""
    return httpx.create_ssl_context(verify=True, trust_env=False)


def guarded_client(
    settings: HttpSettings,
    *,
    timeout: float | httpx.Timeout | None = None,
    follow_redirects: bool = False,
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """An httpx client for workflow-chosen URLs: SSRF-guarded, no env proxies, no .netrc."""
    return httpx.Client(
        transport=GuardedTransport(AddressPolicy.from_settings(settings)),
        timeout=settings.timeout_s if timeout is None else timeout,
        follow_redirects=follow_redirects,
        max_redirects=settings.max_redirects,
        trust_env=False,
        headers=headers,
    )


_DEFAULT_PORTS = {"http": 80, "https": 443}
# Encoded `.`, `/` and `\`: a server may decode them back into `..` or a path separator.
_ENCODED_SEPARATORS = (b"%2e", b"%2f", b"%5c")


def origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in, as httpx connects."""
    parsed = httpx.URL(str(url))
    host = parsed.raw_host.decode("ascii", errors="replace").lower().rstrip(".")
    return parsed.scheme, host, parsed.port or _DEFAULT_PORTS.get(parsed.scheme)


def under_base_url(url: str | httpx.URL, base_url: str | httpx.URL) -> bool:
    """Whether `url` lies under `base_url`: the same origin, and a path at or below the base's
    path in whole segments (`/v1` covers `/v1` and `/v1/x`, not `/v1x`).

    Judged on the URL as httpx sends it (dot segments already removed). Below a path prefix an
    encoded dot or slash is refused: the server might decode it into a step out of the prefix.
    """
    target, base = httpx.URL(str(url)), httpx.URL(str(base_url))
    if origin(target) != origin(base):
        return False
    prefix = base.raw_path.partition(b"?")[0].rstrip(b"/")
    if not prefix:
        return True
    path = target.raw_path.partition(b"?")[0]
    if path != prefix and not path.startswith(prefix + b"/"):
        return False
    return not any(marker in path.lower() for marker in _ENCODED_SEPARATORS)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or an HTTP date) or `retry-after-ms`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis:
        with contextlib.suppress(ValueError):
            return max(float(millis) / 1000, 0.0)
    value = (lowered.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


__all__ = [
    "METADATA_ADDRESSES",
    "METADATA_HOSTNAMES",
    "AddressPolicy",
    "BlockedAddressError",
    "GuardedBackend",
    "GuardedTransport",
    "check_url",
    "classify",
    "guarded_client",
    "origin",
    "parse_retry_after",
    "under_base_url",
]
