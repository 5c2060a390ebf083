"""The event loop ``coby run`` runs on (``event_loop``: auto, uvloop, asyncio; coby.eventloop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from coby import eventloop
from coby.errors import ConfigError
from tests.conftest import free_port

COBY = [sys.executable, "-m", "coby.cli"]


async def _kind() -> str:
    await asyncio.sleep(0)
    return eventloop.running()


def test_each_setting_runs_its_loop():
    # auto: uvloop (a dependency on Linux) wherever it is installed
    assert eventloop.choose("auto") == "uvloop"
    assert eventloop.run(_kind(), "auto") == "uvloop"
    assert eventloop.choose("uvloop") == "uvloop" and eventloop.choose("asyncio") == "asyncio"
    assert eventloop.run(_kind(), "uvloop") == "uvloop"
    assert eventloop.run(_kind(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.choose("auto") == "asyncio"
    assert eventloop.run(_kind(), "auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed.*COBY_EVENT_LOOP=asyncio"):
        eventloop.choose("uvloop")


def test_a_bad_setting_is_refused_before_anything_starts(tmp_path):
    out = subprocess.run([*COBY, "run", "--simulate", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "COBY_EVENT_LOOP": "trio"}, timeout=60)
    assert out.returncode == 2
    assert "event_loop=trio: must be one of auto, uvloop, asyncio" in out.stderr


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def _daemon(tmp_path, flags: list[str], kind: str, **env_extra: str):
    """``coby run --simulate`` with ``flags``, logging JSON; yields (its base URL, the log). On leaving: SIGTERM,
    and the log must show it ran on ``kind`` and stopped cleanly (exit 0, nothing left pending)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COBY_")}
    env.update(COBY_SIMULATOR_PORT="0", COBY_SHUTDOWN_TIMEOUT="5", LOG_LEVEL="INFO", **env_extra)
    log_path = tmp_path / "coby.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([*COBY, "run", "--simulate", "--port", str(port), *flags,
                                 "--data-dir", str(tmp_path / "data")], stdout=log_file, stderr=subprocess.STDOUT,
                                env=env)
        try:
            yield f"http://127.0.0.1:{port}", log_path
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    assert code == 0, log_path.read_text()[-2000:]
    assert [x["event_loop"] for x in lines if x.get("event") == "daemon_starting"] == [kind]
    assert [x["pending_rows"] for x in lines if x.get("event") == "daemon_stopped"] == [0]


@pytest.mark.parametrize("setting,kind", [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_daemon_runs_on_either_loop(tmp_path, setting, kind):
    """A whole ``coby run --simulate`` on each loop: status names the loop, every venue connects and
    trades arrive, and SIGTERM stops it cleanly (exit 0, nothing left pending)."""
    loop = {} if setting is None else {"COBY_EVENT_LOOP": setting}
    with _daemon(tmp_path, ["--exchanges", "binance,okx,kraken", "--symbols", "BTC-USDT"], kind, **loop) as (base, _):
        deadline, st = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                st = _get(f"{base}/api/v1/status")
                if all(v["state"] == "connected" and v["messages"] > 0 for v in st["exchanges"].values()):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert st.get("event_loop") == kind, st
        assert {v["state"] for v in st["exchanges"].values()} == {"connected"}, st["exchanges"]
        deadline = time.monotonic() + 30
        while not _get(f"{base}/api/v1/trades/BTC-USDT?limit=5")["trades"] and time.monotonic() < deadline:
            time.sleep(0.5)  # stored: the writer's batches
        assert _get(f"{base}/api/v1/trades/BTC-USDT?limit=5")["trades"]


def test_a_collector_runs_on_uvloop_by_default(tmp_path, pg_url):
    """Role collector (serves no client) on ``auto``: uvloop; it gets ready (venues connected, storage up) and
    stops cleanly, nothing left pending."""
    flags = ["--role", "collector", "--db", pg_url, "--redis", "redis://127.0.0.1:6379/14", "--exchanges", "binance,okx",
             "--symbols", "BTC-USDT"]
    with _daemon(tmp_path, flags, "uvloop", COBY_COLLECTOR_ID=f"loop-{uuid.uuid4().hex[:8]}") as (base, log_path):
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and not ready:
            try:
                ready = _get(f"{base}/ready").get("ok") is True
            except OSError:
                pass
            time.sleep(0.5)
        assert ready, log_path.read_text()[-2000:]
