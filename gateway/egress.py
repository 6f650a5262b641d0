"""The egress policy: which addresses an admin-set URL may make Portico connect to.

Callers never choose an upstream host, but admins do (upstream base URLs, OAuth token
URLs, OpenAPI documents to import), and an admin-set URL must not turn Portico into a
way into its own network: a cloud metadata service, a database port, the gateway's
admin endpoint. So every such URL passes this one policy, when it is saved and again
when a connection is made (names can be re-pointed between the two):

- the host is resolved (``getaddrinfo``) and *every* address it resolves to must be
  public: not private, loopback, link-local, multicast, reserved, unspecified or shared
  (carrier-grade NAT), including those hidden in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64);
- unless the address is inside a network, or the host is a name, that
  ``PORTICO_EGRESS_ALLOW`` lists (comma-separated CIDRs, addresses and host names; a name
  starting with a dot also allows its subdomains), for upstreams that live on a private
  network on purpose. The default allows nothing private.

Redirects are the caller's part: a client following a redirect would connect to a host
this policy never saw, so callers do not follow them.

Usage::

    policy = EgressPolicy.from_env(os.environ)
    policy.check_url("https://api.example.com/v1")          # raises EgressError
    addresses = await policy.resolve_url_async(url)          # checked, for pinning
    policy.allows("db.internal", "10.0.0.5")                 # one resolved address

This module imports nothing from Django, so the gateway uses it too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

ENV_VAR = "PORTICO_EGRESS_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST_NAME = re.compile(r"^\.?(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}$")
# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class EgressError(Exception):
    """A URL the policy refuses; ``str(exc)`` says why and what to do, and names only the
    host (never the URL's path, query or user info, which may hold secrets)."""


class HostNotFound(EgressError):
    """The host does not resolve: nothing can be said about where it points yet."""


def is_public(address: IPAddress) -> bool:
    """True when ``address`` is a public (globally routable unicast) address, looking
    through the IPv6 forms that carry an IPv4 address inside."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
        if address.ipv4_mapped is not None:
            return True  # judged by its IPv4 address just above
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address is the one reached
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """What may be reached besides public addresses (see the module docstring).

    ``EgressPolicy()`` allows public addresses only.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()  # lower-case; ".example.org" also covers subdomains

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        """The policy allowing ``entries`` (CIDRs, addresses, host names). Raises
        ``ValueError`` naming the first entry that is none of those."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if not _HOST_NAME.match(name) or name.replace(".", "").isdigit():
                raise ValueError(
                    f"{entry!r} is neither a network (10.0.0.0/8, fd00::/8), an address nor a "
                    "host name (api.internal, or .internal for every name under it)"
                )
            hosts.add(name)
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EgressPolicy:
        """The policy ``PORTICO_EGRESS_ALLOW`` in ``environ`` describes (unset: public
        addresses only). Raises ``ValueError`` naming the variable when it is malformed."""
        try:
            return cls.parse(environ.get(ENV_VAR, "").split(","))
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}: {exc}") from None

    def allows_host(self, host: str) -> bool:
        """True when ``host`` is a name listed (whatever it resolves to)."""
        name = host.lower().rstrip(".")
        return any(
            name == allowed
            or (allowed.startswith(".") and (name.endswith(allowed) or name == allowed[1:]))
            for allowed in self.hosts
        )

    def allows(self, host: str, address: str | IPAddress) -> bool:
        """True when ``host`` may be reached at ``address`` (one address it resolved to)."""
        if self.allows_host(host):
            return True
        ip = _plain(_ip(address))
        if any(ip in network for network in self.networks):
            return True
        return is_public(ip)

    def check_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """Raise :class:`EgressError` unless every one of ``addresses`` is allowed."""
        for address in addresses:
            if not self.allows(host, address):
                where = host if _is_literal(host) else f"{host} resolves to {address}, which"
                raise EgressError(
                    f"{where} is {_describe(_plain(_ip(address)))}: Portico connects only "
                    "to public addresses. If this service is meant to be on your network, "
                    f"add its host or network to {ENV_VAR}."
                )

    def check_url(self, url: str) -> None:
        """Raise :class:`EgressError` unless Portico may connect to ``url``'s host (which
        is resolved now; :class:`HostNotFound` when it does not resolve)."""
        self.resolve_url(url)

    def resolve_url(self, url: str) -> list[str]:
        """The addresses ``url``'s host resolves to, every one checked: connect to one of
        these (rather than resolving again) to leave no room for a changed answer."""
        host, port = _host_and_port(url)
        addresses = _addresses(_getaddrinfo(host, port))
        if not self.allows_host(host):
            self.check_addresses(host, addresses)
        return addresses

    async def check_url_async(self, url: str) -> None:
        """:meth:`check_url`, resolving on the event loop's resolver (no blocking)."""
        await self.resolve_url_async(url)

    async def resolve_url_async(self, url: str) -> list[str]:
        """:meth:`resolve_url`, resolving on the event loop's resolver (no blocking)."""
        host, port = _host_and_port(url)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise HostNotFound(_not_found(host, exc)) from None
        addresses = _addresses(infos)
        if not self.allows_host(host):
            self.check_addresses(host, addresses)
        return addresses


def _ip(address: str | IPAddress) -> IPAddress:
    if isinstance(address, str):
        # A link-local IPv6 address from getaddrinfo may carry its zone ("fe80::1%eth0").
        return ipaddress.ip_address(address.split("%", 1)[0])
    return address


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _describe(address: IPAddress) -> str:
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (such as a cloud metadata service)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private:
        return "a private address"
    return "not a public address"


def _host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EgressError("The URL is malformed (check its host and port).") from None
    if parts.scheme not in ("http", "https"):
        raise EgressError("Only http:// and https:// URLs may be used.")
    if not parts.hostname:
        raise EgressError("The URL names no host.")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _getaddrinfo(host: str, port: int) -> list[tuple[object, ...]]:
    try:
        return list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(_not_found(host, exc)) from None


def _not_found(host: str, exc: BaseException) -> str:
    return f"The host name {host} does not resolve ({type(exc).__name__}); check the URL."


def _addresses(infos: Iterable[Sequence[object]]) -> list[str]:
    """The distinct addresses of ``getaddrinfo`` results, in its order (its preference)."""
    found: dict[str, None] = {}
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        found[str(sockaddr[0])] = None
    if not found:
        raise HostNotFound("The host resolves to no address.")
    return list(found)
