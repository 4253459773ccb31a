# Both entry points create or reuse .venv and install what they need from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The AWS SDK for JavaScript v3 that tests/test_sdk_js.py runs (tests/js/package-lock.json).
JS_STAMP := tests/js/node_modules/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	if command -v npm >/dev/null; then \
		cd tests/js && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: the JS SDK tests will skip"; fi

demo: $(STAMP)
	$(VENV)/bin/rolesanywhere-agent demo

test: $(STAMP) $(JS_STAMP)
	$(VENV)/bin/ruff check daemon tests bench
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check daemon tests bench

# Figures, not pass/fail: each script prints what it measured beside its goal (README).
BENCH := fleet.py refresh_storm.py startup.py memory.py serve_cached.py
bench: $(STAMP)
	command -v wrk >/dev/null && command -v nginx >/dev/null || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null; }
	cd bench && for script in $(BENCH); do ../$(PY) $$script || exit 1; echo; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info daemon/*.egg-info tests/js/node_modules
