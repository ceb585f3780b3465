"""Who sent a request: the client address and user agent that go into the audit log.

``X-Forwarded-For`` is spoofable by anyone, so it is honoured only when the TCP peer is a
trusted proxy (``trusted_proxies``: addresses or CIDR networks of reverse proxies you run);
then the client is the right-most address not itself a trusted proxy. Otherwise the peer
address is the client.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True, slots=True)
class ClientInfo:
    ip: str | None
    user_agent: str | None


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``trusted_proxies`` as networks. Raises ValueError for an entry that is not one."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_ip(peer: str | None, forwarded_for: str | None, proxies: tuple[Network, ...]) -> str | None:
    """The client's address given the TCP peer and the X-Forwarded-For header."""
    if peer is None or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop[:64]
    return hops[0][:64] if hops else peer


def client_of(request: Request, proxies: tuple[Network, ...], *, max_agent_chars: int) -> ClientInfo:
    peer = request.client.host if request.client else None
    agent = request.headers.get("user-agent")
    return ClientInfo(
        ip=client_ip(peer, request.headers.get("x-forwarded-for"), proxies),
        user_agent=agent[:max_agent_chars] if agent else None,
    )
