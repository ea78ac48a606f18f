from __future__ import annotations

import contextlib
import ssl

from smtpgate.tls import describe_tls, starts_with_tls_handshake
from tests.tls.tls_testkit import client_context


def test_client_hello_prefix_detection() -> None:
    # A real ClientHello from Python's own TLS stack.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(verify=False).wrap_bio(incoming, outgoing, server_hostname="x.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert starts_with_tls_handshake(hello)
    assert starts_with_tls_handshake(hello[:3])
    assert not starts_with_tls_handshake(hello[:2])
    assert not starts_with_tls_handshake(b"EHLO client.example\r\n")
    assert not starts_with_tls_handshake(b"\x16\x02\x00")  # SSLv2-ish version
    assert describe_tls(obj) == ("none", "none")  # handshake not finished
