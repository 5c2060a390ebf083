#!/usr/bin/env bash
# Memory and lag over a long run (issue 16): `coby run` with ten venues × N symbols at RATE updates/s per market,
# the simulator in its own process, PostgreSQL; the daemon's /api/v1/status load section printed every 30 s.
#   bench/soak.sh [N symbols, 10] [seconds, 1200] [rate, 10]
#   PIN=1,0 bench/soak.sh 45 600     # coby on CPU 1, the simulator on CPU 0 (taskset), as bench/daemon.py --pin
#   BASE=/work/base bench/soak.sh 10 1200   # and a checkout of an older commit beside it, on the same simulator
#                                            # (its own database and port; PIN puts it on coby's CPU too)
# Symbols beyond the instrument table are plain mid-priced markets XA01-USDT... (as bench/daemon.py).
# Run from the checkout; uses .venv/bin/python and a scratch database coby_bench_soak_<pid> of its own (dropped at
# the end), so two soaks can run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}; SECS=${2:-1200}; RATE=${3:-10}
PY=${PYTHON:-$PWD/.venv/bin/python}
ROOT=$PWD
SYMS=$($PY -c "from coby.instruments import SYMBOLS; print(','.join((list(SYMBOLS) + [f'XA{i:02d}-USDT' for i in range(1, 100)])[:$N]))")
PIN_RUN=(); PIN_SIM=()
if [ -n "${PIN:-}" ]; then
  PIN_RUN=(taskset -c "${PIN%%,*}")
  [[ "$PIN" == *,* ]] && PIN_SIM=(taskset -c "${PIN#*,}")
fi
SP=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AP=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DB=coby_bench_soak_$$
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
[ -n "${BASE:-}" ] && psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS ${DB}_base WITH (FORCE)" \
  -c "CREATE DATABASE ${DB}_base" >/dev/null
DATA=$(mktemp -d)
PYTHONPATH=$ROOT "${PIN_SIM[@]}" $PY -m coby.cli simulate --port "$SP" --rate "$RATE" --symbols "$SYMS" >/dev/null 2>&1 &
SIM=$!
sleep 3
start() {  # start <tree> <api port> <database> <log>: coby run of that tree against the simulator, from a directory
  cd "$DATA"  # with no coby in it (python -m puts the working directory before PYTHONPATH)
  env -u COBY_TEST_REDIS PYTHONPATH=$1 COBY_EXCHANGE_URLS="*=http://127.0.0.1:$SP" COBY_SYMBOLS="$SYMS" \
    COBY_EXCHANGES=binance,coinbase,kraken,okx,bybit,bitfinex,gate,kucoin,mexc,htx LOG_LEVEL=WARNING \
    COBY_DATA_DIR="$(mktemp -d -p "$DATA")" API_PORT="$2" COBY_DB_URL="postgresql://postgres@127.0.0.1:5432/$3" \
    "${PIN_RUN[@]}" $PY -m coby.cli run >"$4" 2>&1 &
  cd "$ROOT"
}
start "$ROOT" "$AP" "$DB" "$DATA/run.log"
RUN=$!
APS=("$AP"); RUNS=("$RUN")
if [ -n "${BASE:-}" ]; then
  BP=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start "$BASE" "$BP" "${DB}_base" "$DATA/base.log"
  APS+=("$BP"); RUNS+=("$!")
fi
trap 'kill "${RUNS[@]}" $SIM 2>/dev/null || true' EXIT
echo "# $N symbols x 10 venues at $RATE/s, $SECS s; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# s [tree] state warming_up loop_lag_p99_s rss_mb venues_at_rate write_backlog load1"
for i in $(seq 1 $((SECS / 30))); do
  sleep 30
  for k in "${!APS[@]}"; do
    tree=$([ "$k" = 0 ] && echo "" || echo "base ")
    curl -s -m 5 "localhost:${APS[$k]}/api/v1/status" | $PY -c "
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    print($i * 30, '${tree}no status'); sys.exit()
l = d.get('load') or {}
ok = sum(1 for v in (l.get('venues') or {}).values()
         if v.get('expected_per_s') and v['delivered_per_s'] >= 0.95 * v['expected_per_s'])
print($i * 30, '${tree}' + str(l.get('state')), l.get('warming_up'), l.get('loop_lag_p99_s'), (l.get('rss_bytes') or 0) >> 20,
      ok, l.get('write_backlog_rows'), open('/proc/loadavg').read().split()[0])" || true  # a status that times out is a line
  done
done
kill "${RUNS[@]}"; wait "${RUNS[@]}" || true; kill $SIM; wait $SIM || true
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS ${DB}_base WITH (FORCE)" >/dev/null
