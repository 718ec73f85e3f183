# The two commands a new user needs (both set themselves up idempotently):
#   make demo   run the platform on its embedded default with demo data, print the URLs
#   make test   run the whole test suite (unit on SQLite, integration on PostgreSQL + Redis + a worker)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: demo test test-unit test-integration system-deps clean-var lock lock-check docs lint

# Installs exactly uv.lock (uv sync --frozen never resolves). uv itself is bootstrapped with pip at
# the version the lock names, hash-checked against the lock's own hashes, so nothing needs uv beforehand.
$(STAMP): pyproject.toml client/pyproject.toml uv.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || { $(PY) -c 'import tomllib; p = next(p for p in tomllib.load(open("uv.lock", "rb"))["package"] if p["name"] == "uv"); print("uv==" + p["version"], *("--hash=" + w["hash"] for w in p["wheels"]))' > $(VENV)/uv-requirement.txt \
	  && $(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: -r $(VENV)/uv-requirement.txt; }
	$(UV) sync --frozen --extra test --quiet
	touch $(STAMP)

# Update the lock on purpose (after editing pyproject.toml, or to take new releases: make lock ARGS=--upgrade).
lock: $(STAMP)
	$(UV) lock $(ARGS)

# Fails when pyproject.toml and uv.lock disagree (CI runs it before the tests).
lock-check: $(STAMP)
	$(UV) lock --check

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

# What a contributor runs before committing (and CI before the tests): lint and format (ruff), the layers
# of ARCHITECTURE.md (import-linter contracts in pyproject.toml), and no model change without its migration.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) manage.py makemigrations --check --dry-run --settings=evalsite.settings.test

# The documentation site (mkdocs.yml), offline; --strict makes a broken link or an unlisted page an error.
# The settings reference must be what docs/gen_settings.py writes from the code.
docs: $(STAMP)
	$(PY) docs/gen_settings.py --check
	$(PY) -m mkdocs build --strict --site-dir var/site

clean-var:
	rm -rf var
