# The two commands a newcomer needs: `make run` and `make test`. Both work on a fresh clone: they
# create the virtual environment and install the project on first use; `make test` also installs
# the system parts its tests drive (.ci/system-deps) and the Node packages its tests use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-deps system lint bench soak install wheel clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# A development secret, made once; never used in production (HUB_ENV=production refuses short
# or missing secrets, and .env is ignored by git).
.env:
	@$(PYTHON) -c "import secrets; print('HUB_ENV=development'); print('HUB_JWT_SECRET=' + secrets.token_hex(32))" > .env
	@echo "wrote .env with a fresh development secret"

run: install .env
	@mkdir -p var
	$(BIN)/hubctl migrate
	$(BIN)/hubctl serve

# Everything the suite needs beyond the virtualenv: system packages, and the Node packages of
# the JavaScript client and of the test identity provider, each from its lock file.
NPM_DIRS   := $(patsubst %/package-lock.json,%,$(wildcard clients/js/package-lock.json tests/idp/package-lock.json))
NPM_STAMPS := $(addsuffix /node_modules/.package-lock.json,$(NPM_DIRS))

system:
	@./.ci/system-deps

test-deps: install system $(NPM_STAMPS)

%/node_modules/.package-lock.json: %/package-lock.json | system
	cd $* && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: test-deps
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check app hubclient tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# Soak and chaos (docs/operations.md, "Soak and chaos"): SOAK_MINUTES (10), SOAK_CONNECTIONS
# (10000), SOAK_OUT (var/soak). Network namespaces need root; otherwise it runs on loopback.
soak: install system
	$(BIN)/python -m bench.soak

# The installable package: dist/agent_hub-<version>-py3-none-any.whl (build/ is cleared first so
# that no file removed from the tree lingers in the wheel).
wheel: install
	rm -rf build
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) var build dist .pytest_cache .mypy_cache .ruff_cache
