#!/usr/bin/env bash
# Tools the test suite needs beyond bootstrap.sh's servers: promtool (Debian's
# prometheus package) checks and unit-tests deployments/alerts.rules.yml.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  # Root on CI containers; a developer's machine goes through sudo.
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "test-tools: installing ${need_apt[*]}"
  "${sudo[@]}" apt-get update -qq
  # --no-install-recommends: promtool is all we need, not the server's web assets or exporters.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The package starts a Prometheus service where an init system runs; the tests only need promtool.
command -v promtool >/dev/null || { echo "test-tools: promtool is missing after installing prometheus" >&2; exit 1; }
