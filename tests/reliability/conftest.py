"""The reliability tests run on the end-to-end fixtures of ``tests/proxy`` (an in-process
gateway, the scripted upstream on the same loop thread, the upstream CA): imported here,
not written twice."""

from tests.proxy.conftest import (
    ca_file,
    loop,
    make_gate,
    make_scripted_upstream,
    pki_dir,
    state_dir,
    upstream_ca,
    upstream_cert,
)

__all__ = [
    "ca_file",
    "loop",
    "make_gate",
    "make_scripted_upstream",
    "pki_dir",
    "state_dir",
    "upstream_ca",
    "upstream_cert",
]
