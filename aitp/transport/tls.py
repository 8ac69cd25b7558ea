"""One TLS policy for every client aitp has (the task API, the token endpoint, Ollama, OpenAI,
Wikidata): the system's trust store, `SSL_CERT_FILE` / `SSL_CERT_DIR` as OpenSSL reads them (the
variables every ops team sets for a private CA), the extra CAs of `tls.ca_bundle`, and an optional
client certificate for mutual TLS. Verification is always on: there is no setting to turn it off.

requests (the token and Wikidata clients) trusts only certifi's bundle unless told otherwise, and
httpx (the OpenAI SDK) has its own defaults; both are given the same answer here.
"""

from __future__ import annotations

import ssl

from aitp.config import Settings


def client_context(settings: Settings) -> ssl.SSLContext:
    """For the clients that take an SSLContext (aitp's HTTP/1.1 client, httpx)."""
    context = ssl.create_default_context()      # system trust; OpenSSL reads SSL_CERT_FILE and SSL_CERT_DIR
    if settings.tls.ca_bundle:
        context.load_verify_locations(cafile=settings.tls.ca_bundle)
    if settings.tls.client_cert:
        context.load_cert_chain(settings.tls.client_cert, settings.tls.client_key)
    return context


def requests_session(context: ssl.SSLContext | None):
    """A requests Session whose https connections use `context` (with None, requests' defaults)."""
    import requests
    from requests.adapters import HTTPAdapter

    class ContextAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            kwargs["ssl_context"] = context
            return super().init_poolmanager(*args, **kwargs)

        def proxy_manager_for(self, *args, **kwargs):
            kwargs["ssl_context"] = context
            return super().proxy_manager_for(*args, **kwargs)

    session = requests.Session()
    if context is not None:
        session.mount("https://", ContextAdapter())
    return session
