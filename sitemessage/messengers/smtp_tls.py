"""The TLS context of an SMTP connection (STARTTLS and implicit TLS alike)."""

from __future__ import annotations

import ssl
from typing import Optional


def tls_context(
    ssl_context: Optional[ssl.SSLContext] = None,
    ca_file: Optional[str] = None,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
) -> ssl.SSLContext:
    """A context that verifies the server (against ``ca_file`` or the system's CAs) and presents a client certificate.

    A given ``ssl_context`` is used as it is: the caller chose everything.
    """
    if ssl_context is not None:
        return ssl_context
    context = ssl.create_default_context(cafile=ca_file or None)
    if certfile:
        context.load_cert_chain(certfile, keyfile or None)
    return context
