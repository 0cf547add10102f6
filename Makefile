# Every target creates or refreshes .venv by itself: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV_STAMP := $(VENV)/.dev-installed
BENCH_STAMP := $(VENV)/.bench-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: test tools lint typecheck unit extras wheel demo bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(DEV_STAMP)
	$(PIP) install -e '.[dev,bench]'
	touch $@

test: tools lint typecheck unit extras test-oldest

# The servers and checkers the tests use for real: redis-server and promtool, from Debian's
# packages, installed only when missing (and only where apt-get can run as root).
tools:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v memcached >/dev/null 2>&1 || missing="$$missing memcached"; \
	command -v valgrind >/dev/null 2>&1 || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian packages) for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing$$missing; install them to run every test (with CI=true their tests fail)"; \
	  fi; \
	fi

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# What a new user installs, in fresh virtual environments from the package index: the wheel
# with the server extra, and the memcached extra against a real memcached.
extras: tools $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider tests/extras_install.py tests/extras_memcached.py

# The installable package of this checkout: dist/buttress-<version>-py3-none-any.whl.
wheel: | $(BIN)/python
	$(PIP) wheel --no-deps -w dist .

soak: $(DEV_STAMP)
	$(BIN)/python -m pytest -m soak -p no:xdist

# The demo needs only the server extra (uvicorn, seconds to install), not the whole dev set.
demo: | $(BIN)/python
	@$(BIN)/python -c 'import buttress, uvicorn' 2>/dev/null || $(PIP) install -e '.[server]'
	$(BIN)/buttress demo

# wrk drives the server part, valgrind counts instructions; installed when missing (root + apt).
bench: $(BENCH_STAMP)
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v valgrind >/dev/null 2>&1 || missing="$$missing valgrind"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing (Debian packages) for the benchmark"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-oldest .mypy_cache .pytest_cache .ruff_cache dist

# The oldest versions pyproject.toml allows (constraints/oldest.txt), in a second venv: the
# whole suite, as `make unit` runs it, proves every floor (about 2 minutes on a warm pip cache).
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.oldest-installed
OLDEST_PIP := $(OLDEST)/bin/python -m pip --disable-pip-version-check --quiet
.PHONY: test-oldest

$(OLDEST)/bin/python:
	$(PYTHON) -m venv $(OLDEST)

$(OLDEST_STAMP): pyproject.toml constraints/oldest.txt | $(OLDEST)/bin/python
	$(OLDEST_PIP) install -c constraints/oldest.txt -e '.[dev]'
	touch $@

test-oldest: $(OLDEST_STAMP)
	$(OLDEST)/bin/python -m pytest -p no:cacheprovider -n 2 --dist loadgroup
