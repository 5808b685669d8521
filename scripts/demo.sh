#!/usr/bin/env bash
# The main job on the embedded default: Prefect's local SQLite database, the
# example stack (local PostgreSQL, MariaDB, Redis, a folder of files) and a local
# vault. Seeds a little demo data if the demo databases are empty, then takes a
# full backup of every source.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .genesis-dr && chmod 700 .genesis-dr

if [ -z "${BACKUP_ENCRYPTION_PASSWORD:-}" ]; then
  if [ ! -s .genesis-dr/passphrase ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' > .genesis-dr/passphrase)
    echo "demo: generated an encryption passphrase in .genesis-dr/passphrase - keep it; restores need it"
  fi
  # The stack names the file; backups and restores read it when they need it (never stored in Prefect).
  GENESIS_DR_PASSPHRASE_FROM="file:$PWD/.genesis-dr/passphrase"
  export GENESIS_DR_PASSPHRASE_FROM
fi

python scripts/seed_demo.py
genesis-dr apply examples/dr.yaml
genesis-dr backup full
echo
genesis-dr list
