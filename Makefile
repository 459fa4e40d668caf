# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Real peers the tests and the demo talk to: curl as an HTTP client.
system-deps:
	@command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl)

demo: venv system-deps
	$(PY) -m arca_control.demo

test: venv system-deps
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
