# The two commands a newcomer needs: `make run` and `make test`. Both work on a fresh clone: they
# create the virtual environment and install the project on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench install clean

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

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check app hubclient tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
