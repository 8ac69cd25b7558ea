"""Forward proxies: which one the environment names, its URL read, the CONNECT tunnel and the absolute form."""

from __future__ import annotations

import base64
import os
import socket
from typing import NamedTuple
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment

from aitp.transport.http1.connection import _MAX_HEADER_BYTES, _Connection
from aitp.transport.http1.errors import HttpTransportError


class _Proxy(NamedTuple):
    host: str
    port: int
    authorization: str | None       # Basic credentials from the proxy URL's userinfo


def _parse_proxy(url: str) -> _Proxy:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"an http:// forward proxy, not {url!r}")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    return _Proxy(parts.hostname, parts.port or 80, authorization)


def proxy_for(base_url: str, environ=None) -> str | None:
    """The forward proxy the environment names for `base_url` (HTTPS_PROXY or HTTP_PROXY, upper or
    lower case), or None where NO_PROXY excludes its host, as curl and requests read them."""
    environ = os.environ if environ is None else environ
    parts = urlsplit(base_url)
    proxies = {name.lower(): value for name, value in environ.items()
               if name.lower() in ("http_proxy", "https_proxy", "no_proxy") and value}
    proxy = proxies.get(f"{parts.scheme}_proxy")
    if not proxy:
        return None
    no_proxy = proxies.get("no_proxy", "")
    if no_proxy and proxy_bypass_environment(parts.hostname or "", {"no": no_proxy}):
        return None
    return proxy


def absolute_form_prefix(proxy: _Proxy | None, tls: bool, host_header: str) -> str:
    """What goes before each request's path."""
    # Through a proxy, plain http requests name the whole URL (absolute form); https tunnels.
    return f"http://{host_header}" if proxy and not tls else ""


def tunnel(sock: socket.socket, proxy: _Proxy, host: str, port: int, timeout: float | None) -> None:
    """CONNECT to the origin through the proxy; the TLS handshake then runs inside the tunnel, so
    the proxy sees neither the requests nor the token."""
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    connection = _Connection(sock, timeout, _MAX_HEADER_BYTES)
    try:
        connection.start_deadline()
        connection.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status, _, _ = connection.read_tunnel_answer()
    except HttpTransportError:
        sock.close()
        raise
    if status != 200:
        sock.close()
        raise HttpTransportError("ProxyError", f"the proxy refused the tunnel to {host}:{port}: "
                                               f"{status}")
