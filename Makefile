# realtime-transport: every target sets up what it needs (a machine with only Python will do).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
# checkov pins its own dependency tree (boto3, jsonschema, ...): its own venv, as the SAM CLI has.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
# `sam build` needs the functions' runtime (python3.13) on PATH.
# (pyenv's shims do not satisfy SAM's check: look for a real interpreter first.)
PY313_DIR ?= $(shell for p in $$HOME/.pyenv/versions/3.13*/bin/python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 \
	/usr/local/bin/python3.13 /usr/bin/python3.13; do test -x $$p && dirname $$p && break; done)
ARGS ?=

.PHONY: install dev test test-unit test-integration lint format build validate checkov fuzz audit bench chaos screenshot clean layer-requirements

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its dev tools

dev: install ## run the local stack on http://127.0.0.1:3000 (ARGS="--port 0" etc.)
	$(BIN)/realtime-transport dev $(ARGS)

test: install ## every test: unit, integration (local stack), browser
	$(BIN)/python -m pytest $(ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(ARGS)

test-integration: install
	$(BIN)/python -m pytest tests/integration $(ARGS)

lint: install ## ruff, mypy, the layer's requirements and cfn-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/realtime/realtime_transport local/realtime_devstack
	@# Each function is its own Lambda bundle (every one has an app.py): check them one by one.
	@for d in functions/*/; do echo "mypy $$d"; MYPYPATH=$$d $(BIN)/mypy $$d || exit 1; done
	$(BIN)/python scripts/layer_requirements.py --check
	$(BIN)/cfn-lint template.yaml

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

layer-requirements: install ## regenerate layers/realtime/requirements.txt from pyproject.toml
	$(BIN)/python scripts/layer_requirements.py

$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

# Every failed check fails; a check that does not apply is skipped in template.yaml, with its reason
# (Metadata: checkov: skip). --skip-download: no Prisma Cloud guidelines (not reachable, not needed).
checkov: $(CHECKOV_STAMP) ## checkov over template.yaml: 0 failed checks
	$(CHECKOV) -f template.yaml --framework cloudformation --compact --skip-download

# The HTTP API from its /openapi.json for much longer than `make test` (ARGS="-k rooms" etc.).
fuzz: install ## schemathesis with 500 examples per operation against the local stack
	SCHEMATHESIS_MAX_EXAMPLES=$${SCHEMATHESIS_MAX_EXAMPLES:-500} SCHEMATHESIS_RANDOM=1 \
		$(BIN)/python -m pytest -s -p no:cacheprovider tests/integration/test_schemathesis.py $(ARGS)

# Known vulnerabilities of what the layer ships (its pinned requirements, resolved) and of the
# dev environment. --strict: a dependency the service could not look up fails the audit rather
# than passing unchecked (without it pip-audit says "could not be audited" and exits 0).
audit: install ## pip-audit of the pinned dependencies; fails if it could not check them
	@$(BIN)/pip-audit --strict --progress-spinner off -r layers/realtime/requirements.txt \
		|| { echo "make audit: vulnerabilities found, or the vulnerability service could not be reached: NOT a pass"; exit 1; }
	@$(BIN)/pip-audit --strict --progress-spinner off --skip-editable \
		|| { echo "make audit: vulnerabilities found, or the vulnerability service could not be reached: NOT a pass"; exit 1; }

validate: $(SAM) install ## sam validate --lint and cfn-lint
	$(BIN)/cfn-lint template.yaml
	PATH="$(PY313_DIR):$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) validate --lint --region us-east-1
	PATH="$(PY313_DIR):$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) validate --region us-east-1

build: $(SAM) ## sam build (python3.13 must be installed)
	@test -n "$(PY313_DIR)" || { echo "sam build needs python3.13 on PATH (the functions' runtime)"; exit 1; }
	PATH="$(PY313_DIR):$$PATH" SAM_CLI_TELEMETRY=0 $(SAM) build

deploy: build ## sam deploy --guided (needs AWS credentials)
	SAM_CLI_TELEMETRY=0 $(SAM) deploy --guided

chaos: install ## the checker for longer than make test runs it (ARGS="--seed 7 --seconds 300")
	$(BIN)/python -m realtime_devstack.chaos --seconds 120 $(ARGS)

screenshot: install ## retake docs/dashboard.png (needs Chromium)
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/python -m pytest tests/browser -k screenshot $(ARGS)

bench: install ## benchmarks: print figures and ratios measured side by side
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
