"""URL rules shared by the HTTP blocks and the simulators (no heavy imports)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_public_https(url: str) -> bool:
    """True when ``url`` is HTTPS to a host others can reach (not loopback or localhost):
    what a service on the internet needs to call us back."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host or host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True
