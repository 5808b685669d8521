# The two commands the README names: `make demo` and `make test`.
VENV := .venv/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: bootstrap demo test lint bench bench-postgres bench-mysql bench-redis bench-files bench-cli bench-pitr bench-replicate bench-drill bench-failover bench-retention

bootstrap:
	@bash scripts/bootstrap.sh

## Set everything up and take a full backup of the example stack.
demo: bootstrap
	@bash scripts/demo.sh

## Run the whole test suite (and the layer contract): three workers, each test file whole on one of them
## (module-scoped servers stay shared), each worker with its own servers and Prefect harness.
TEST_WORKERS ?= 3
test: bootstrap
	@bash scripts/test-tools.sh
	$(VENV)/lint-imports
	$(VENV)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: bootstrap
	$(VENV)/ruff check core flows tasks blocks cli deployments tests benchmarks
	$(VENV)/lint-imports

## Every source's backup and restore against its native tools (installs the reference tools it lacks).
bench: bench-postgres bench-mysql bench-redis bench-files

bench-postgres: bootstrap
	$(VENV)/python benchmarks/backup_postgres.py

bench-mysql: bootstrap
	$(VENV)/python benchmarks/backup_mysql.py

bench-redis: bootstrap
	$(VENV)/python benchmarks/backup_redis.py

bench-files: bootstrap
	$(VENV)/python benchmarks/backup_files.py

bench-cli: bootstrap
	$(VENV)/python benchmarks/cli_latency.py

## Point-in-time recovery of PostgreSQL under a write load, against pgBackRest (installs it when missing).
bench-pitr: bootstrap
	$(VENV)/python benchmarks/pitr.py

## Replication of 1 GB of backups to S3 on a moto server against rclone, and an S3-vault backup against a local one.
bench-replicate: bootstrap
	$(VENV)/python benchmarks/replicate.py

## The monthly drill on PostgreSQL 1 GB + MariaDB 300 MB + Redis 1 M keys: whole-stack RTO per stage (goal < 3 min).
bench-drill: bootstrap
	$(VENV)/python benchmarks/drill.py

## Two regions, primary killed under a writer: detection, promotion, DNS, end to end and lost writes (goal < 60 s, 0 lost).
bench-failover: bootstrap
	$(VENV)/python benchmarks/failover.py

## Retention: the planner on a year of a busy stack (goal < 3 s), and deleting expired backups against restic and shred.
bench-retention: bootstrap
	$(VENV)/python benchmarks/retention.py
