#!/usr/bin/env bash
# Install everything the test suite needs and run it: the one test command (README, .ci/run).
# Makes sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are up, starting them if they
# are installed but stopped; creates .venv and installs coby with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

wait_for() {  # wait_for <what> <command...>
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "scripts/test.sh: $what is not reachable" >&2; return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL" >&2
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  elif command -v systemctl >/dev/null; then
    systemctl start postgresql || true
  fi
  wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || redis-server --daemonize yes --port 6379 --save ""
  wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping
fi

# Debian's Chromium for the dashboard's browser tests (tests/test_dashboard*.py), when it is missing
# and apt can install it (as root); Playwright drives it by path, it never downloads a browser.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Chromium" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
    || echo "scripts/test.sh: could not install chromium (the dashboard tests need it)" >&2
fi

# Debian's Prometheus (prometheus + promtool) for deploy/'s checks (tests/test_prometheus.py: promtool on the
# config and the alert rules, a real Prometheus scraping a simulated coby); the service is not started.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing Prometheus" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } >/dev/null \
    || echo "scripts/test.sh: could not install prometheus (tests/test_prometheus.py needs it)" >&2
fi

# Debian's nginx for deploy/nginx/coby.conf run for real in front of two API nodes (tests/test_deploy_nginx.py);
# the service is not started.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing nginx" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; } >/dev/null \
    || echo "scripts/test.sh: could not install nginx (tests/test_deploy_nginx.py needs it)" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# A real TimescaleDB (PostgreSQL 17 + TimescaleDB 2.23, a WASM build from npm: tests/timescale/) for the
# migration, hypertable, compression and retention tests that read COBY_TEST_TIMESCALE; skipped (those
# tests skip themselves) where Node.js or the npm registry is missing.
TS_PID=""
if [ -z "${COBY_TEST_TIMESCALE:-}" ] && command -v node >/dev/null && command -v npm >/dev/null; then
  mkdir -p .cache/timescale && cp tests/timescale/package.json tests/timescale/serve.mjs .cache/timescale/
  if (cd .cache/timescale && npm install --no-audit --no-fund --silent >/dev/null 2>&1); then
    TS_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    node .cache/timescale/serve.mjs "$TS_PORT" > .cache/timescale/server.log 2>&1 &
    TS_PID=$!
    for _ in $(seq 1 60); do grep -q listening .cache/timescale/server.log 2>/dev/null && break; sleep 0.5; done
    if grep -q listening .cache/timescale/server.log; then
      export COBY_TEST_TIMESCALE="postgresql://postgres:x@127.0.0.1:${TS_PORT}/postgres?sslmode=disable"
    else
      echo "scripts/test.sh: the TimescaleDB test server did not start (its tests will skip)" >&2
    fi
  else
    echo "scripts/test.sh: could not install the TimescaleDB test server from npm (its tests will skip)" >&2
  fi
fi
trap '[ -n "$TS_PID" ] && kill "$TS_PID" 2>/dev/null || true' EXIT
.venv/bin/pytest "$@"
