#!/usr/bin/env bash
# Tools the test suite needs beyond bootstrap.sh's servers: promtool (Debian's
# prometheus package) checks and unit-tests deployments/alerts.rules.yml.
set -euo pipefail

need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)  # checks deployments/genesis-dr.service
if [ ${#need_apt[@]} -gt 0 ]; then
  # Root on CI containers; a developer's machine goes through sudo.
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "test-tools: installing ${need_apt[*]}"
  "${sudo[@]}" apt-get update -qq
  # --no-install-recommends: promtool is all we need, not the exporters and web assets it recommends. (Where an
  # init system runs, the package also starts a Prometheus server; containers and CI have none.)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
command -v promtool >/dev/null || { echo "test-tools: promtool is missing after installing prometheus" >&2; exit 1; }
