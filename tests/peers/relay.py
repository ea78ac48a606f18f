"""smtpgate in front of an aiosmtpd upstream: the setup most interop tests share.

The ``relay`` fixture (``tests/interop/conftest.py``) hands a test a :class:`Relay`
bound to its factories and certificates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .certs import LeafFiles, TestPKI
from .gate_config import gate_config
from .smtpgate_proc import SmtpgateProcess
from .upstream import AiosmtpdUpstream

__all__ = ["Relay"]


@dataclass
class Relay:
    """smtpgate, presenting ``gate_cert`` to its clients, in front of an aiosmtpd upstream
    that presents ``upstream_cert``; the factories stop what they started."""

    start_gate: Callable[..., SmtpgateProcess]
    start_upstream: Callable[..., AiosmtpdUpstream]
    pki: TestPKI
    upstream_cert: LeafFiles
    gate_cert: LeafFiles

    def upstream(self, tls: str | None = "starttls", **kw: Any) -> AiosmtpdUpstream:
        """``tls``: ``"starttls"`` (offered), ``"implicit"`` or ``None`` (clear only)."""
        ctx = self.pki.server_context(self.upstream_cert) if tls else None
        if tls == "implicit":
            return self.start_upstream(implicit=ctx, **kw)
        return self.start_upstream(starttls=ctx, **kw)

    def gate(
        self,
        up: AiosmtpdUpstream,
        *,
        verify: bool = True,
        policy: Mapping[str, Any] | None = None,
        profile: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> SmtpgateProcess:
        """``gate_config(**kw)`` towards ``up``; ``verify``: the upstream's certificate is
        validated against the test CA."""
        trust = {"ca_file": str(self.pki.ca_file)} if verify else {}
        return self.start_gate(
            gate_config(
                up.port,
                server_cert=self.gate_cert,
                policy={"upstream_implicit_tls": up.implicit_tls, **(policy or {})},
                profile={"validate_certificates": verify, **trust, **(profile or {})},
                **kw,
            )
        )

    def __call__(
        self, tls: str | None = "starttls", *, verify: bool = True, **gate_kw: Any
    ) -> tuple[AiosmtpdUpstream, SmtpgateProcess]:
        """An upstream (see :meth:`upstream`) and a gate in front of it (see :meth:`gate`)."""
        up = self.upstream(tls)
        return up, self.gate(up, verify=verify, **gate_kw)
