"""Correlation ids: one HTTP request and one replay session followed through a running daemon's JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

COBY = [sys.executable, "-m", "coby.cli"]


def _call(url: str, method: str = "GET", body: dict | None = None, request_id: str | None = None):
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-ID"] = request_id
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def _lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_one_request_and_one_replay_session_are_followed_through_the_log(tmp_path):
    """With JSON logs: a request's X-Request-ID comes back in the response header and in a JSON error
    body, and every line it caused carries it; a replay session's lines - created, controlled, its own
    task's (started, finished) - all carry its replay_id, the session's own lines without the id of the
    request that started it; a connector's lines carry exchange, symbol, stream and feed."""
    port = free_port()
    log_path = tmp_path / "coby.log"
    env = {**os.environ, "COBY_SIMULATOR_PORT": "0", "LOG_LEVEL": "INFO", "COBY_SHUTDOWN_TIMEOUT": "5"}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([*COBY, "run", "--simulate", "--port", str(port), "--exchanges", "binance,okx",
                                 "--symbols", "BTC-USDT", "--data-dir", str(tmp_path / "data")],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if _call(f"{base}/ready")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "daemon not ready"
                time.sleep(0.3)
            t0 = int(time.time() * 1000)
            time.sleep(3)  # some trades and books stored, for the replay

            status, headers, body = _call(f"{base}/api/v1/trades/NOPE-USDT", request_id="req-follow-1")
            assert status == 404 and headers["X-Request-ID"] == "req-follow-1"
            assert body["request_id"] == "req-follow-1" and body["ok"] is False
            status, headers, _ = _call(f"{base}/api/v1/status")  # no id sent: one is made
            assert status == 200 and len(headers["X-Request-ID"]) >= 8
            status, headers, _ = _call(f"{base}/health", request_id="bad id with spaces")
            assert headers["X-Request-ID"] != "bad id with spaces"  # not echoed into logs and headers

            status, _, created = _call(f"{base}/api/v1/replay", "POST", {"start": t0, "end": t0 + 2000, "speed": 0},
                                       request_id="req-replay-create")
            assert status == 201, created
            rid = created["replay"]["id"]
            assert _call(f"{base}/api/v1/replay/{rid}/start", "POST", {}, request_id="req-replay-start")[0] == 200
            deadline = time.monotonic() + 30
            while _call(f"{base}/api/v1/replay/{rid}")[2]["replay"]["state"] not in ("finished", "failed"):
                assert time.monotonic() < deadline, "replay did not finish"
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    lines = _lines(log_path)
    request_lines = [ln for ln in lines if ln.get("request_id") == "req-follow-1"]
    assert [ln["event"] for ln in request_lines] == ["http_request"]
    assert request_lines[0]["status"] == 404 and request_lines[0]["path"] == "/api/v1/trades/NOPE-USDT"

    replay_lines = [ln for ln in lines if ln.get("replay_id") == rid]
    events = [ln["event"] for ln in replay_lines]
    assert events[0] == "replay_created" and replay_lines[0]["request_id"] == "req-replay-create"
    assert "replay_finished" in events, events
    start_lines = [ln for ln in replay_lines if ln.get("request_id") == "req-replay-start"]
    assert start_lines and start_lines[-1]["event"] == "http_request"
    finished = next(ln for ln in replay_lines if ln["event"] == "replay_finished")
    assert "request_id" not in finished  # the session's own task: about the session, not the request

    connected = [ln for ln in lines if ln.get("event") == "connection_event" and ln.get("kind") == "connected"]
    assert connected, "no connection_event line"
    assert {"exchange", "symbol", "stream", "feed"} <= set(connected[0])
