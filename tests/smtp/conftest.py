"""Certificates made at test time (trustme); nothing is ever written to the repository."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import pytest
import trustme


@dataclass
class PKI:
    ca: trustme.CA
    leaf: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def pki() -> PKI:
    ca = trustme.CA()
    return PKI(ca, ca.issue_cert("localhost", "127.0.0.1", "sink.test"))
