# The two commands the README names: `make demo` and `make test`.
VENV := .venv/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: bootstrap demo test lint bench bench-cli

bootstrap:
	@bash scripts/bootstrap.sh

## Set everything up and take a full backup of the example stack.
demo: bootstrap
	@bash scripts/demo.sh

## Run the whole test suite (and the layer contract).
test: bootstrap
	$(VENV)/lint-imports
	$(VENV)/python -m pytest -q tests

lint: bootstrap
	$(VENV)/ruff check core flows tasks blocks cli tests benchmarks
	$(VENV)/lint-imports

bench: bootstrap
	$(VENV)/python benchmarks/backup_postgres.py

bench-cli: bootstrap
	$(VENV)/python benchmarks/cli_latency.py
