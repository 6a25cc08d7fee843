# make demo: run the whole system once.  make test: every test, against real services.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test install services lint bench clean

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

test: services
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: services
	$(BIN)/saga bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
