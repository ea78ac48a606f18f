"""The TLS profile's fields are defined once, by the configuration (SPEC.md 3); the tls
package's read-only view and its cache key follow them."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpgate.config.format1 import FORMAT1_TLS_KEYS
from smtpgate.config.schema import TLSProfile
from smtpgate.tls.profile import PROFILE_FIELDS, profile_key

OTHER_VALUE = {
    "name": "Other",
    "min_version": "1.3",
    "pfs": "required",
    "validate_certificates": False,
    "ca_file": Path("/etc/ssl/other.pem"),
    "ocsp": True,
    "ocsp_allow_unavailable": False,
    "tls_compliant_only": True,
}


def test_the_tls_view_has_exactly_the_configurations_fields() -> None:
    assert tuple(TLSProfile.model_fields) == PROFILE_FIELDS
    assert set(FORMAT1_TLS_KEYS) < set(PROFILE_FIELDS)


@pytest.mark.parametrize("field", PROFILE_FIELDS)
def test_every_field_changes_the_cache_key(field: str) -> None:
    base = TLSProfile(name="Base")
    changed = base.model_copy(update={field: OTHER_VALUE[field]})
    assert getattr(changed, field) != getattr(base, field)
    assert profile_key(changed) != profile_key(base)
