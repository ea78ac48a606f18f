"""How long the fuzz harness runs: a bounded budget in CI, a long one for ``make fuzz``.

``SMTPGATE_FUZZ=long`` (what ``make fuzz`` sets) multiplies every target's example
count by :data:`LONG_FACTOR`; otherwise each target runs its CI budget, chosen so
that the whole harness stays within about a minute on the project's 2-core machine.
Hypothesis keeps every failing input in ``.hypothesis/`` and tries it first on the
next run; an input it ever found is also written into the test as an ``@example``,
so it stays a regression test on every machine.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG_FACTOR = 100
LONG = os.environ.get("SMTPGATE_FUZZ", "") == "long"


def budget(ci_examples: int) -> settings:
    """Settings for one fuzz target: ``ci_examples`` in CI, many more for ``make fuzz``."""
    return settings(
        max_examples=ci_examples * LONG_FACTOR if LONG else ci_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
