# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint fuzz bench venv system-deps profile-deps clean

# How long `make fuzz` runs each mode (seconds).
FUZZ_SECONDS ?= 600

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Real peers that are not our code: curl (an HTTP client) and socat (a relay and UDP peer);
# and what arca-run's sandbox sets itself up with: nft (nftables) and ip (iproute2), in sbin.
system-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; for program in curl socat nft ip; do \
		command -v $$program >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || (apt-get update -qq && apt-get install -y -qq curl socat nftables iproute2)

demo: venv system-deps
	$(PY) -m arca_control.demo

# Lint and strict types first (ruff and mypy come with the test extras the venv installs), then the suite.
test: lint system-deps
	$(PY) -m pytest

# Strict types and lint (configured in pyproject.toml): both must report 0 errors.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

# The long fuzz run: both modes, with progress; any finding fails it and lands in tools/fuzz/corpus/found/.
fuzz: venv
	$(PY) -m tools.fuzz codec --seconds $(FUZZ_SECONDS)
	$(PY) -m tools.fuzz live --seconds $(FUZZ_SECONDS)

# Every performance case side by side, as ratios; results also in bench.json.
bench: venv system-deps
	$(PY) -m tools.bench --json bench.json

# The profiler docs/PERFORMANCE.md's profiles were taken with (py-spy record --pid ...), into the venv.
profile-deps: venv
	$(PY) -m pip install py-spy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
