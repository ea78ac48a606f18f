# Everything a fresh machine needs comes from here: `make demo`, `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv peers test lint typecheck pytest fuzz bench demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Real peers for the interop tests (Postfix, swaks, HAProxy, openssl, testssl.sh), from
# Debian; sslyze from PyPI in a virtualenv of its own (its cryptography pin conflicts
# with ours: tests/scanners/sslyze-requirements.txt).
SCANNERS := $(VENV)/scanners/.installed

peers: $(SCANNERS)
	bash scripts/install-peers.sh

$(SCANNERS): tests/scanners/sslyze-requirements.txt
	python3 -m venv $(VENV)/scanners
	$(VENV)/scanners/bin/python -m pip install -q -r tests/scanners/sslyze-requirements.txt
	touch $(SCANNERS)

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv peers
	$(VENV)/bin/pytest

test: lint typecheck pytest

# The fuzz harness (tests/fuzz) with 100 times the examples `make test` runs: one to two
# hours on a 2-core machine. What it finds stays in .hypothesis/ and is
# retried first next time; add it to the test as an @example.
fuzz: venv
	SMTPGATE_FUZZ=long $(VENV)/bin/pytest tests/fuzz -m fuzz -o timeout=0 -x

bench: venv peers
	$(PY) -m bench

demo: venv
	$(VENV)/bin/smtpgate demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
