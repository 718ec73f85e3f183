# The two commands a new user needs (both set themselves up idempotently):
#   make demo   run the platform on its embedded default with demo data, print the URLs
#   make test   run the whole test suite (unit on SQLite, integration on PostgreSQL + Redis + a worker)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-unit test-integration system-deps clean-var

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py demo

# Debian's chromium drives the browser tests (playwright's own browser download does not work offline).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt) for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Both sessions always run; the target fails if either did.
test: $(STAMP) system-deps
	@status=0; \
	$(MAKE) --no-print-directory test-unit || status=1; \
	$(MAKE) --no-print-directory test-integration || status=1; \
	exit $$status

test-unit: $(STAMP)
	$(PY) -m pytest

test-integration: $(STAMP)
	$(PY) -m pytest --ds=evalsite.settings.integration tests/integration

clean-var:
	rm -rf var
