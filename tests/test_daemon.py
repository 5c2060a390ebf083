"""The daemon and the CLI: start, serve, stop on SIGTERM with everything flushed, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from coby.daemon import Daemon
from coby.models import TradeEvent, utcnow
from tests.conftest import free_port, make_settings

COBY = [sys.executable, "-m", "coby.cli"]


def test_invalid_setting_exits_2_with_one_line(tmp_path):
    """A bad value is reported in one line naming the setting, exit code 2."""
    r = subprocess.run([*COBY, "run", "--port", "99999", "--data-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "api_port" in r.stderr
    r = subprocess.run([*COBY, "run", "--exchanges", "binance,nasdaq"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nasdaq" in r.stderr


@pytest.mark.parametrize("url", ["postgresql://coby@127.0.0.1:notaport/market", "postgresql://a b@host/db",
                                 "postgresql://coby@127.0.0.1/market?frobnicate=1"])
def test_a_database_url_that_can_never_work_exits_2_with_one_line(tmp_path, url):
    """A malformed database URL is a setting to fix: one line naming db_url, exit code 2 (a database that
    is merely down is not: the daemon starts and journals, see test_durability.py)."""
    env = {**os.environ, "COBY_EXCHANGES": "binance", "COBY_LOG_LEVEL": "WARNING"}
    r = subprocess.run([*COBY, "run", "--db", url, "--data-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if "db_url" in ln]
    assert len(lines) == 1 and "invalid setting db_url" in lines[0]


def test_non_loopback_bind_requires_a_token(tmp_path):
    """coby refuses to bind a non-loopback address without COBY_API_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k != "COBY_API_TOKEN"}
    r = subprocess.run([*COBY, "run", "--host", "0.0.0.0", "--data-dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 2 and "COBY_API_TOKEN" in r.stderr


@pytest.mark.parametrize("which", ["postgresql", "sqlite"])
def test_migrate_command_is_idempotent(which, pg_url, tmp_path):
    """`coby migrate` sets up the schema, twice without harm, and says which mode is in force."""
    url = pg_url if which == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    for _ in range(2):
        r = subprocess.run([*COBY, "migrate", "--db", url], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "schema up to date" in r.stdout


def test_run_serves_health_and_exits_0_on_sigterm(tmp_path):
    """`coby run` answers /health and /api/v1/status, and on SIGTERM stops within the shutdown bound, exit 0."""
    port = free_port()
    env = {**os.environ, "COBY_EXCHANGES": "binance", "COBY_SHUTDOWN_TIMEOUT": "5"}
    proc = subprocess.Popen([*COBY, "run", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert body == {"ok": True}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=5) as r:
            status = json.loads(r.read())
        assert status["storage"]["kind"] == "sqlite"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read().decode()
        assert "daemon_stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_daemon_stop_flushes_buffered_rows(tmp_path, pg_url):
    """Rows accepted by storage before stop() are in the database after it."""
    settings = make_settings(tmp_path, db_url=pg_url, api_port=0, exchanges="binance", flush_interval=60.0)
    d = Daemon(settings)
    d.connectors = {}  # storage, cache and HTTP only: connectors are tested on their own
    d._start_connectors = _noop  # type: ignore[method-assign]
    await d.start()
    await d.storage.fetch("TRUNCATE trade_events", [])
    now = utcnow()
    for i in range(300):
        await d.storage.store_trade(TradeEvent("ETH-USDT", "binance", now, 2000.0, 1.0, "buy", f"d{i}", now))
    await d.stop()
    await d.stop()  # idempotent
    from coby.db import open_storage
    async with open_storage(settings, pg_url) as st:
        assert len(await st.get_trades("ETH-USDT", limit=1000)) == 300


async def _noop() -> None:
    await asyncio.sleep(0)
