"""The outcome of an upstream certificate check, as logged (SPEC.md section 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "failed", "not-checked"]


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """``str()`` gives the log form: ``ok``, ``failed: hostname mismatch``."""

    status: Status
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status

    @property
    def failed(self) -> bool:
        return self.status == "failed"


OK = VerificationResult("ok")
NOT_CHECKED = VerificationResult("not-checked")
