# make demo: run the whole system once.  make test: every test, against real services.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test install services lint bench clean node

$(BIN)/saga: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/saga

# RabbitMQ and Redis must answer; where Docker runs, they are started for you.
services: install
	$(BIN)/saga check --start

demo: services
	$(BIN)/saga demo

test: services node
	$(BIN)/python -m pytest -q

# The npm packages of the Node.js reference participant and of the AsyncAPI
# parser the tests use, as their lock files pin them. Without npm the tests
# that need them skip (and fail in CI, whose .ci/run installs Node.js).
NODE_DIRS = participants/examples/node-payment tests/asyncapi
ifneq ($(shell command -v npm),)
node: $(NODE_DIRS:%=%/node_modules/.package-lock.json)
else
node:
	@echo "npm not found: the tests that need Node.js will be skipped (apt-get install nodejs npm)"
endif

%/node_modules/.package-lock.json: %/package-lock.json
	cd $* && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: services
	$(BIN)/saga bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis $(NODE_DIRS:%=%/node_modules)
