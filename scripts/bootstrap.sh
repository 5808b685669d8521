#!/usr/bin/env bash
# Make this checkout runnable on a fresh machine: server binaries, a virtualenv
# with pinned dependencies (constraints.txt), and the genesis-dr command.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v pg_dump >/dev/null || need_apt+=(postgresql postgresql-client)
[ -x /usr/lib/postgresql/15/bin/initdb ] || command -v initdb >/dev/null || need_apt+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v mariadb-dump >/dev/null || command -v mysqldump >/dev/null || need_apt+=(mariadb-client)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v gzip >/dev/null || need_apt+=(gzip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Tests run initdb/pg_ctl/postgres from PATH; Debian keeps them out of it.
if ! command -v initdb >/dev/null; then
  for b in initdb pg_ctl postgres; do ln -sf "/usr/lib/postgresql/15/bin/$b" "/usr/local/bin/$b"; done
fi

# Prefect's home holds its SQLite database (every block, source passwords included): private to its owner.
prefect_home=${PREFECT_HOME:-$HOME/.prefect}
mkdir -p "$prefect_home" && chmod 700 "$prefect_home"
for f in "$prefect_home"/prefect.db "$prefect_home"/prefect.db-wal "$prefect_home"/prefect.db-shm; do
  if [ -f "$f" ]; then chmod 600 "$f"; fi
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.genesis-dr-installed
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi
