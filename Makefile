# CityOps — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup up down demo test test-fast lint bench schemas clean-state

setup:
	@scripts/setup.sh

up: setup
	@$(VENV)/cityops stack up

down:
	@$(VENV)/cityops stack down

## The main job: the real stack and a whole simulated city, end to end.
demo: up
	@$(VENV)/cityops demo

## Everything CI runs: lint, type checks, schema drift, and all tests against the real stack.
test: up lint
	@$(VENV)/python -m pytest -q

test-fast: setup
	@$(VENV)/python -m pytest -q -m "not stack and not browser"

lint: setup
	@$(VENV)/ruff check .
	@$(VENV)/mypy shared/settings.py shared/kafka.py shared/city.py shared/units.py shared/batch_io.py schemas
	@$(VENV)/python -m schemas.generate --check

bench: up
	@$(VENV)/python -m bench.run_all

schemas: setup
	@$(VENV)/python -m schemas.generate

clean-state: down
	rm -rf .state
