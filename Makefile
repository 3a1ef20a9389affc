# Everything runs from a local virtualenv (.venv), created on first use from python3.
# `make demo` and `make test` are the only two commands a newcomer needs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: venv test test-postgres demo docs lint clean

venv: $(VENV)/.installed

# Re-installs whenever setup.py changes (new dependency, new extra).
$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The demo needs only Django and aiosmtpd (the `demo` extra), not the test tools; pip shows its progress.
# A stamp of its own: `make test` after `make demo` still installs the test extra.
$(VENV)/.demo-installed: setup.py
	@test -x $(PY) || echo 'Creating the virtualenv $(VENV) (takes a few seconds) ...'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo 'Installing django-sitemessage with the demo extra (Django, aiosmtpd) into $(VENV) ...'
	$(PY) -m pip install --progress-bar on -e '.[demo]'
	touch $@

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-postgres: venv
	SITEMESSAGE_TEST_DB=postgres $(PY) -m pytest $(PYTEST_ARGS)

# The demo: SQLite, a local SMTP sink, a sender (sitemessage_worker --prepare) and runserver on 127.0.0.1:$(PORT).
demo: $(VENV)/.demo-installed
	cd demo_project && PORT=$(PORT) ../$(PY) run_demo.py

$(VENV)/.lint-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

# ruff (lint and format, ruff.toml) and mypy (setup.cfg) over the package.
lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sitemessage

docs: $(VENV)/.docs-installed
	$(VENV)/bin/sphinx-build -W -b html docs docs/_build/html

# Removes build output and demo data; keeps .venv (delete it by hand for a fresh start).
clean:
	rm -rf docs/_build build dist *.egg-info .tox
	rm -f demo_project/db.sqlite3 demo_project/outbox.jsonl
	find . \( -path ./.venv -o -path ./.git \) -prune -o -name __pycache__ -type d -exec rm -rf {} +
