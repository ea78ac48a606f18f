"""schemathesis over the OpenAPI document of a running ``smtpgate serve``.

Every operation of ``/api/v1/openapi.json`` gets a bounded number of
generated requests (valid and invalid bodies, paths and headers) with an
admin token; each answer must be no server error, a documented status with a
documented content type, and match its documented schema.
"""

from __future__ import annotations

from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from tests.api.helpers import ConsoleUnderTest, start_console
from tests.peers.upstream import AiosmtpdUpstream

#: Per operation: enough to meet each documented error, bounded so the test takes seconds.
EXAMPLES = 8


def test_every_operation_answers_as_documented(tmp_path: Path) -> None:
    with AiosmtpdUpstream() as upstream:
        console = start_console(tmp_path / "gate", upstream.port)
        try:
            _check_all_operations(console, console.add_token("schemathesis"))
        finally:
            console.gate.stop()


def _check_all_operations(console: ConsoleUnderTest, token: str) -> None:
    ca = str(console.gate.state_dir / "tls" / "ca.pem")
    schema = schemathesis.openapi.from_url(f"{console.base_url}/api/v1/openapi.json", verify=ca)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    with requests.Session() as session:
        session.verify = ca
        for operation in operations:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=console.base_url,
                    session=session,
                    headers={"Authorization": f"Bearer {token}"},
                    verify=ca,
                    excluded_checks=[
                        # Repeated wrong credentials get 429 (the back-off docs/api.md
                        # promises), not the 401 this check insists on; test_auth shows 401.
                        ignored_auth,
                        # The document declares shapes; values are the editing model's
                        # to judge (one validation), so a well-shaped request may get 422.
                        positive_data_acceptance,
                    ],
                )

            check()
