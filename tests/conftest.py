"""Shared by every test folder: the repository root on ``sys.path``, so that the
peers and test servers of :mod:`tests.peers` import as ``tests.peers.*``
whichever folder ``pytest`` is pointed at."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
