"""The SSRF guard: address classes, allowances, resolution, rebinding, and Retry-After."""

import ipaddress
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from flowmaestro_dagster.nodes.net import (
    AddressPolicy,
    BlockedAddressError,
    check_url,
    classify,
    guarded_client,
    parse_retry_after,
)
from flowmaestro_dagster.settings import HttpSettings
from flowmaestro_dagster.testing import EchoServer


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("fd12:3456::1", "unique-local"),
        ("fc00::1", "unique-local"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "reserved"),  # documentation
        ("198.18.0.1", "reserved"),  # benchmarking
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_classify(address: str, category: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == category


def policy(**settings: Any) -> AddressPolicy:
    return AddressPolicy.from_settings(HttpSettings(**settings))


@pytest.mark.parametrize(
    ("settings", "allowed", "refused"),
    [
        ({}, ["8.8.8.8"], ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "0.0.0.0"]),
        ({"allow_loopback": True}, ["127.0.0.1", "::1"], ["10.0.0.1", "169.254.169.254"]),
        (
            {"allow_private": True},
            ["10.0.0.1", "192.168.0.1", "fd00::1", "100.64.1.1"],
            ["127.0.0.1", "169.254.169.254", "fd00:ec2::254", "169.254.1.1", "224.0.0.1"],
        ),
        (
            {"allow_loopback": True, "allow_private": True},
            ["127.0.0.1", "10.0.0.1"],
            ["169.254.169.254", "0.0.0.0", "ff02::1"],
        ),
        (
            {"allowed_hosts": ["10.20.0.0/16", "169.254.169.254"]},
            ["10.20.3.4", "169.254.169.254"],
            ["10.21.0.1", "127.0.0.1"],
        ),
    ],
)
def test_allowances(settings: dict[str, Any], allowed: list[str], refused: list[str]) -> None:
    rules = policy(**settings)
    for address in allowed:
        assert rules.refusal(ipaddress.ip_address(address)) is None, address
    for address in refused:
        assert rules.refusal(ipaddress.ip_address(address)) is not None, address


def test_refusal_says_how_to_allow() -> None:
    refused = policy().refusal(ipaddress.ip_address("127.0.0.1"))
    assert refused is not None
    assert refused[0] == "loopback"
    assert "FLOWMAESTRO_HTTP__ALLOW_LOOPBACK=true" in refused[1]


@pytest.mark.parametrize(
    "host", ["metadata.google.internal", "METADATA.google.internal.", "metadata", "[fd00:ec2::254]"]
)
def test_metadata_hosts_are_refused_without_a_lookup(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no DNS lookup expected")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    with pytest.raises(BlockedAddressError, match="refused") as info:
        policy(allow_private=True).check_host(host)
    assert info.value.category == "metadata"


def test_hostname_allowlist_and_wildcards(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = policy(allowed_hosts=["api.internal", "*.corp.internal"])
    fake = FakeResolver({"api.internal": ["10.0.0.5"], "db.corp.internal": ["10.9.9.9"]})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert rules.resolve("api.internal", 80) == ["10.0.0.5"]
    assert rules.resolve("DB.corp.internal", 80) == ["10.9.9.9"]
    with pytest.raises(BlockedAddressError):
        policy().resolve("api.internal", 80)


class FakeResolver:
    """A getaddrinfo that answers chosen names (a list per call) and passes IP literals on."""

    def __init__(self, answers: dict[str, list[str] | list[list[str]]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}
        self.real: Callable[..., Any] = socket.getaddrinfo

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in self.answers:
            return self.real(host, port, *args, **kwargs)
        count = self.calls.get(name, 0)
        self.calls[name] = count + 1
        answer = self.answers[name]
        addresses = answer[min(count, len(answer) - 1)] if isinstance(answer[0], list) else answer
        out = []
        for address in addresses:
            assert isinstance(address, str)
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, int(port or 0), 0, 0) if ":" in address else (address, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out


def test_any_blocked_address_refuses_the_whole_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeResolver({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(BlockedAddressError, match=r"10\.0\.0\.7 is a private address"):
        policy().resolve("mixed.example", 443)
    assert policy(allow_private=True).resolve("mixed.example", 443) == [
        "93.184.216.34",
        "10.0.0.7",
    ]


def test_check_url_refuses_other_schemes_and_resolves() -> None:
    with pytest.raises(BlockedAddressError, match="scheme 'ftp'"):
        check_url("ftp://example.com/file", HttpSettings())
    with pytest.raises(BlockedAddressError, match="loopback"):
        check_url("http://localhost:8080/", HttpSettings())
    assert "127.0.0.1" in check_url("http://localhost:8080/", HttpSettings(allow_loopback=True))


# -- the guarded client on real sockets ------------------------------------------------------------


def test_guarded_client_refuses_loopback_unless_allowed(echo: EchoServer) -> None:
    with guarded_client(HttpSettings()) as client, pytest.raises(BlockedAddressError):
        client.get(echo.url("/refused"))
    assert echo.requests == []
    with guarded_client(HttpSettings(allow_loopback=True)) as client:
        assert client.get(echo.url("/allowed")).json()["path"] == "/allowed"


def test_guarded_client_ignores_proxy_environment(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would connect on our behalf, past the check; the client must not use one.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with guarded_client(HttpSettings(allow_loopback=True)) as client:
        assert client.get(echo.url("/direct")).status_code == 200


def test_connects_to_the_address_it_checked_so_dns_rebinding_fails(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # First answer: the allowed 127.0.0.1; any later lookup: 127.0.0.2 (not allowed). A guard
    # that checked and then connected by name would resolve again and reach 127.0.0.2.
    fake = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = HttpSettings(allowed_hosts=["127.0.0.1/32"])
    with guarded_client(settings) as client:
        response = client.get(f"http://rebind.test:{echo.port}/rebind")
    assert response.status_code == 200
    assert response.json()["headers"]["host"] == f"rebind.test:{echo.port}"
    assert fake.calls == {"rebind.test": 1}


def test_a_rebound_private_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeResolver({"rebind.test": ["127.0.0.2"]})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = HttpSettings(allowed_hosts=["127.0.0.1/32"])
    with (
        guarded_client(settings) as client,
        pytest.raises(BlockedAddressError, match=r"127\.0\.0\.2"),
    ):
        client.get("http://rebind.test:1/")


def test_every_redirect_hop_is_checked(echo: EchoServer) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    settings = HttpSettings(allow_loopback=True)
    with (
        guarded_client(settings, follow_redirects=True) as client,
        pytest.raises(BlockedAddressError, match="metadata"),
    ):
        client.get(echo.url(f"/redirect?to={target}"))
    assert [r.path for r in echo.requests] == ["/redirect"]


def test_an_unresolvable_host_is_a_connect_error() -> None:
    with guarded_client(HttpSettings()) as client, pytest.raises(httpx.ConnectError):
        client.get("http://does-not-exist.invalid/")


# -- Retry-After ----------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"Retry-After": format_datetime(NOW + timedelta(seconds=90), usegmt=True)}, 90.0),
        ({"Retry-After": format_datetime(NOW - timedelta(seconds=90), usegmt=True)}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected
