"""Durability: every row accepted is stored once, whatever the database and the disk do.

Each test counts the rows it sent (a producer of uniquely numbered trades, or the trades a live
daemon published - a trade is stored before it is published) against the rows in the real
PostgreSQL at the end: 0 lost and 0 duplicated, or exactly the losses the write path counted. The
database is cut with a TCP proxy (tests/netproxy.py) in front of the shared server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from coby.db import open_storage
from coby.db.journal import HEADER, Journal
from coby.db.tables import TRADES
from coby.errors import StorageUnavailable
from coby.metrics import JOURNAL_SKIPPED, LOST_ROWS
from coby.models import TradeEvent, utc_from_ms
from tests.conftest import make_settings
from tests.netproxy import TcpProxy

T0 = utc_from_ms(1_790_000_000_000)


def trade(i: int, symbol: str = "DUR-USDT") -> TradeEvent:
    ts = T0 + timedelta(microseconds=i * 1000)
    return TradeEvent(symbol, "binance", ts, 100.0 + (i % 100) * 0.01, 0.5, "buy" if i % 2 else "sell", f"t{i}", ts)


def counts(pg_url: str, symbol: str = "DUR-USDT") -> tuple[int, int]:
    """(rows, distinct trade ids) stored for ``symbol``."""
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT trade_id) FROM trade_events WHERE symbol = %s",
                            (symbol,)).fetchone()


def clear(pg_url: str, symbol: str = "DUR-USDT") -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]:
            conn.execute("DELETE FROM trade_events WHERE symbol = %s", (symbol,))


class Producer:
    """Trades numbered from ``start``, ``rate`` a second, into ``storage`` until stopped."""

    def __init__(self, storage, rate: int = 2000, start: int = 0) -> None:
        self.storage, self.rate, self.sent = storage, rate, start
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        per_tick = max(1, self.rate // 50)
        while True:
            for _ in range(per_tick):
                await self.storage.store_trade(trade(self.sent))
                self.sent += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> int:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.sent


async def flushed(st, timeout: float = 60.0) -> float:
    """Wait until everything accepted is in the database; return the seconds it took."""
    t0 = time.monotonic()
    while True:
        try:
            await st.flush()
            return time.monotonic() - t0
        except StorageUnavailable:
            assert time.monotonic() - t0 < timeout, "the database never took the rows"
            await asyncio.sleep(0.1)


async def ready_again(st, timeout: float = 30.0) -> None:
    """Wait until storage says ready (a journal error is held a few seconds after the last failure)."""
    t0 = time.monotonic()
    while st.ready() != (True, None):
        assert time.monotonic() - t0 < timeout, st.ready()
        await asyncio.sleep(0.2)


@pytest.fixture
async def proxy():
    p = await TcpProxy("127.0.0.1", 5432).start()
    yield p
    await p.aclose()


def via(proxy: TcpProxy, pg_url: str) -> str:
    return pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


async def test_database_cut_30s_under_load_loses_nothing(pg_url, tmp_path, proxy):
    """PostgreSQL cut for 30 s while 2,000 trades/s arrive: all of them are stored once; rows flow again
    within 2 s of the database answering (the writer probes every 0.5 s)."""
    clear(pg_url)
    st = open_storage(make_settings(tmp_path, db_url=via(proxy, pg_url), flush_interval=0.2), via(proxy, pg_url))
    await st.start()
    prod = Producer(st)
    try:
        await asyncio.sleep(2)
        proxy.cut()
        await asyncio.sleep(30)
        assert st.buffer.state == "down" and st.ready()[0] is False
        proxy.restore()
        t0 = time.monotonic()
        while st.buffer.state != "up":
            await asyncio.sleep(0.05)
        recovery = time.monotonic() - t0
        await asyncio.sleep(2)
        sent = await prod.stop()
        await flushed(st)
    finally:
        await st.aclose()
    print(f"cut 30 s: sent {sent}, stored {counts(pg_url)}, rows flowing {recovery:.2f} s after the database answered")
    assert sent > 60_000
    assert counts(pg_url) == (sent, sent)
    assert recovery < 2.0 * 3  # 2 s target; generous for a loaded machine


async def test_database_down_at_start_with_a_journal_full_of_rows(pg_url, tmp_path, proxy):
    """A journal left by a run that ended during an outage; the next start finds the database still
    down: it starts anyway (state down, not ready, nothing rejected), and once the database answers
    every journalled and every new row is stored."""
    clear(pg_url)
    settings = make_settings(tmp_path, db_url=via(proxy, pg_url), shutdown_timeout=1.0)
    st = open_storage(settings, via(proxy, pg_url))
    await st.start()
    proxy.cut()
    await st.store_trades([trade(i) for i in range(20_000)])
    await st.aclose()  # SIGTERM's path, database down: the rows stay in the journal
    st2 = open_storage(settings, via(proxy, pg_url))
    await st2.start()  # not fatal
    try:
        assert st2.buffer.state == "down"
        ok, why = st2.ready()
        assert not ok and "database down" in why
        await st2.store_trades([trade(i) for i in range(20_000, 25_000)])
        await asyncio.sleep(1.5)
        assert counts(pg_url) == (0, 0)
        proxy.restore()
        took = await flushed(st2)
    finally:
        await st2.aclose()
    assert counts(pg_url) == (25_000, 25_000)
    assert took < 10
    assert not (Path(settings.data_dir) / "rejected").exists()


async def test_flapping_database_while_a_backlog_drains(pg_url, tmp_path, proxy):
    """200,000 journalled rows drain while the database is cut 5 times for 2 s: each row stored once."""
    clear(pg_url)
    settings = make_settings(tmp_path, db_url=via(proxy, pg_url), data_buffer_size=10_000)
    st = open_storage(settings, via(proxy, pg_url))
    await st.start()
    try:
        proxy.cut()
        for k in range(0, 200_000, 10_000):
            await st.store_trades([trade(i) for i in range(k, k + 10_000)])
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)
        assert st.buffer.journal_bytes() > 10_000_000
        proxy.restore()
        for _ in range(5):
            await asyncio.sleep(0.7)
            proxy.cut()
            await asyncio.sleep(2)
            proxy.restore()
        await flushed(st)
    finally:
        await st.aclose()
    assert counts(pg_url) == (200_000, 200_000)


async def test_torn_tail_and_corrupt_middle_record_skip_only_those_rows(pg_url, tmp_path, proxy):
    """A journal with a torn last record and a corrupted record in the middle: the rows before, between
    and after are stored; exactly the rows of the two damaged records are missing, the skipped bytes
    are logged and counted, and the writer goes on."""
    clear(pg_url)
    settings = make_settings(tmp_path, db_url=via(proxy, pg_url), shutdown_timeout=1.0, flush_interval=30.0)
    st = open_storage(settings, via(proxy, pg_url))
    await st.start()
    proxy.cut()
    for k in range(5):  # five records of 100 rows each
        await st.store_trades([trade(i) for i in range(k * 100, k * 100 + 100)])
        await st.buffer._journal_now()
    await st.aclose()
    seg_dir = Path(settings.data_dir) / "journal" / TRADES.name
    segs = sorted(p for p in seg_dir.glob("*.seg") if p.stat().st_size)
    assert len(segs) == 1
    data = bytearray(segs[0].read_bytes())
    offsets, off = [], 0
    while off < len(data):
        offsets.append(off)
        off += HEADER.size + HEADER.unpack_from(data, off)[1]
    assert len(offsets) == 5
    data[offsets[2] + HEADER.size + 40] ^= 0xFF  # a flipped byte in record 3 (rows 200-299)
    del data[offsets[4] + 200:]                  # record 5 (rows 400-499) torn
    segs[0].write_bytes(bytes(data))
    skipped = JOURNAL_SKIPPED.labels(TRADES.name)._value.get()
    proxy.restore()
    st2 = open_storage(settings, via(proxy, pg_url))
    await st2.start()
    try:
        await st2.store_trades([trade(i) for i in range(1000, 1100)])  # and the writer goes on
        await flushed(st2)
    finally:
        await st2.aclose()
    with psycopg.connect(pg_url) as conn:
        ids = {r[0] for r in conn.execute("SELECT trade_id FROM trade_events WHERE symbol = 'DUR-USDT'")}
    expected = {f"t{i}" for i in [*range(0, 200), *range(300, 400), *range(1000, 1100)]}
    assert ids == expected
    assert JOURNAL_SKIPPED.labels(TRADES.name)._value.get() - skipped == (offsets[3] - offsets[2]) + 200


async def test_old_spill_file_with_a_truncated_line_is_imported(pg_url, tmp_path):
    """A spill file of coby before the journal whose last line is cut: its good lines are stored, the
    bad one is skipped (logged), and storage keeps writing."""
    clear(pg_url)
    from coby.db.tables import row_to_json, trade_row
    settings = make_settings(tmp_path, db_url=pg_url)
    spill = Path(settings.data_dir) / "spill"
    spill.mkdir(parents=True)
    lines = b"".join(row_to_json(TRADES, trade_row(trade(i))) + b"\n" for i in range(300))
    (spill / "trade_events.jsonl").write_bytes(lines[: len(lines) - 30])
    (spill / "trade_events.draining").write_bytes(b"".join(row_to_json(TRADES, trade_row(trade(i))) + b"\n"
                                                           for i in range(300, 360)))
    async with open_storage(settings, pg_url) as st:
        await st.store_trade(trade(999))
        await flushed(st)
        assert st.ready() == (True, None)
    assert counts(pg_url) == (360, 360)  # 299 + 60 + 1
    assert not list(spill.glob("*"))


def fill(path: Path) -> None:
    """Write ``path`` until its disk is full."""
    with path.open("wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_counts_every_lost_row_and_ready_says_why(pg_url, tmp_path, small_disk):
    """The journal's disk fills up while 2,000 trades/s arrive: intake never fails, the rows that cannot
    be journalled are counted as lost (exactly: stored + lost = sent), /ready's storage part says
    'No space left on device', and once space is freed journalling and writing go on."""
    clear(pg_url)
    settings = make_settings(tmp_path, db_url=pg_url, data_dir=str(small_disk / "data"), flush_interval=0.1)
    st = open_storage(settings, pg_url)
    await st.start()
    lost0 = LOST_ROWS.labels(TRADES.name, "journal_write_failed")._value.get()
    prod = Producer(st)
    try:
        await asyncio.sleep(1)
        filler = small_disk / "filler"
        fill(filler)
        for _ in range(100):
            if not st.ready()[0]:
                break
            await asyncio.sleep(0.05)
        ok, why = st.ready()
        assert not ok and "No space left on device" in why
        await asyncio.sleep(1)
        filler.unlink()
        await asyncio.sleep(1)
        sent = await prod.stop()
        await flushed(st)
        await ready_again(st)
    finally:
        await st.aclose()
    lost = LOST_ROWS.labels(TRADES.name, "journal_write_failed")._value.get() - lost0
    stored, distinct = counts(pg_url)
    assert stored == distinct
    assert lost > 0
    assert stored + lost == sent


async def test_journal_reads_across_segments_in_order(tmp_path):
    """Records spread over rotated segments read back in append order, in bounded chunks."""
    j = Journal(tmp_path, TRADES, segment_bytes=4096)
    j.open()
    from coby.db.tables import trade_row
    for k in range(50):
        j.append([trade_row(trade(i)) for i in range(k * 10, k * 10 + 10)])
    j.sync()
    assert len(j.segments()) > 5
    pos, got = j.committed, []
    while pos < j.durable:
        chunk = j.read(pos, j.durable, 37)
        assert len(chunk.rows) <= 37 + 9
        got.extend(r[6] for r in chunk.rows)
        pos = chunk.end
        j.commit(pos)
    assert got == [f"t{i}" for i in range(500)]
    assert len(j.segments()) == 1  # finished segments deleted
    j.close()


# --- kill -9 of a real `coby run` ------------------------------------------------------------------
COBY = [str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "coby")]
if not Path(COBY[0]).exists():
    COBY = [shutil.which("coby") or "coby"]


def _spawn(data_dir: Path, db_url: str, port: int, sim_port: int, symbols: str) -> subprocess.Popen:
    env = {**os.environ, "COBY_EXCHANGES": "binance", "COBY_SYMBOLS": symbols, "COBY_DB_URL": db_url,
           "COBY_FLUSH_INTERVAL": "1.0", "COBY_SIMULATOR_PORT": str(sim_port), "COBY_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([*COBY, "run", "--simulate", "--port", str(port), "--data-dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


async def _status(port: int) -> dict | None:
    import aiohttp
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return await r.json()
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
        return None


async def _collect_then_kill(proc: subprocess.Popen, port: int, seconds: float,
                             before_kill=None) -> tuple[dict[str, float], float]:
    """Subscribe to trades:BTC-USDT, record each trade's id and arrival time, then SIGKILL the daemon."""
    import aiohttp
    import orjson
    deadline = time.monotonic() + 90
    while await _status(port) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the daemon did not start"
        await asyncio.sleep(0.2)
    seen: dict[str, float] = {}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_json({"op": "subscribe", "channels": ["trades:BTC-USDT"], "id": 1})
            t_end = time.monotonic() + seconds
            hook_at = time.monotonic() + seconds / 2
            while time.monotonic() < t_end:
                if before_kill is not None and time.monotonic() >= hook_at:
                    before_kill()
                    before_kill = None
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except asyncio.TimeoutError:
                    continue
                env = orjson.loads(msg.data)
                if env.get("channel") == "trades:BTC-USDT":
                    d = env["data"]
                    seen[f'{d["trade_id"]}@{d["timestamp"]}'] = time.time()
            proc.kill()
            t_kill = time.time()
    await asyncio.to_thread(proc.wait, 30)
    return seen, t_kill


def _stored_btc(pg_url: str) -> dict[str, int]:
    from coby.models import ensure_utc
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT trade_id, timestamp FROM trade_events WHERE exchange = 'binance' "
                            "AND symbol = 'BTC-USDT'").fetchall()
    out: dict[str, int] = {}
    for tid, ts in rows:
        key = f"{tid}@{ensure_utc(ts).isoformat().replace('+00:00', 'Z')}"
        out[key] = out.get(key, 0) + 1
    return out


def _clear_binance(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]:
            conn.execute("DELETE FROM trade_events WHERE exchange = 'binance'")


@pytest.mark.parametrize("outage", [False, True], ids=["database-up", "during-outage"])
async def test_kill_9_loses_at_most_flush_interval(pg_url, tmp_path, proxy, outage):
    """SIGKILL of `coby run --simulate` (binance, BTC-USDT), with the database up or cut for the second
    half of the run: every trade the daemon published more than flush_interval (1 s, + 0.5 s for the
    fsync) before the kill is stored after the next start, each exactly once."""
    from tests.conftest import free_port
    _clear_binance(pg_url)
    data, port, sim = tmp_path / "data", free_port(), free_port()
    proc = _spawn(data, via(proxy, pg_url), port, sim, "BTC-USDT")
    try:
        seen, t_kill = await _collect_then_kill(proc, port, 10.0, proxy.cut if outage else None)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(seen) > 20, "too few trades to judge"
    proxy.restore()
    proc2 = _spawn(data, via(proxy, pg_url), port, sim, "ETH-USDT")  # no new BTC trades
    try:
        deadline = time.monotonic() + 90
        while True:
            st = await _status(port)
            if st and st["storage"]["state"] == "up" and st["storage"]["journal_bytes"] == 0:
                break
            assert proc2.poll() is None, proc2.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"backlog not written: {st and st['storage']}"
            await asyncio.sleep(0.3)
    finally:
        proc2.terminate()  # the proxy lives on this loop: wait off it
        await asyncio.to_thread(proc2.wait, 60)
    stored = _stored_btc(pg_url)
    assert all(n == 1 for n in stored.values()), "a trade stored twice"
    lost = {k: t for k, t in seen.items() if k not in stored}
    late = {k: t for k, t in lost.items() if t < t_kill - 1.5}
    print(f"kill -9 ({'outage' if outage else 'database up'}): published {len(seen)}, lost {len(lost)}, "
          f"all within {max((t_kill - t for t in lost.values()), default=0):.2f} s of the kill")
    assert not late, f"{len(late)} trades lost that arrived more than flush_interval before the kill"
    assert len(seen) - len(lost) > 10


async def test_daemon_starts_and_serves_with_the_database_down(pg_url, tmp_path, proxy):
    """With PostgreSQL unreachable at start, the daemon starts at once, publishes live trades, and says
    storage is down in /api/v1/status, /ready (503, with the reason) and /metrics; once the database
    answers, every trade it published meanwhile is stored, once."""
    import aiohttp
    import orjson

    from coby.daemon import Daemon
    from tests.conftest import free_port
    _clear_binance(pg_url)
    proxy.cut()
    settings = make_settings(tmp_path, db_url=via(proxy, pg_url), simulate=True, simulator_port=0,
                             api_port=free_port(), exchanges="binance", symbols="BTC-USDT", flush_interval=0.2)
    d = Daemon(settings)
    t0 = time.monotonic()
    await d.start()
    started_in = time.monotonic() - t0
    sub = d.cache.subscribe("trades:BTC-USDT", maxsize=100_000)
    base = f"http://127.0.0.1:{d.api_port}"
    try:
        await asyncio.sleep(4)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/api/v1/status") as r:
                storage = (await r.json())["storage"]
            async with s.get(f"{base}/ready") as r:
                ready_status, ready = r.status, await r.json()
            async with s.get(f"{base}/metrics") as r:
                metrics = await r.text()
        assert storage["state"] == "down" and storage["healthy"] is False and storage["journal_bytes"] > 0
        assert ready_status == 503 and "database down" in ready["storage_error"]
        assert "coby_storage_up 0.0" in metrics
        proxy.restore()
        await asyncio.sleep(2)
        published = set()
        while not sub.queue.empty():
            _, payload = sub.queue.get_nowait()
            data = orjson.loads(payload)["data"]
            published.add(f'{data["trade_id"]}@{data["timestamp"]}')
    finally:
        await d.stop()
    assert started_in < 10
    assert len(published) > 5
    stored = _stored_btc(pg_url)
    assert all(n == 1 for n in stored.values())
    assert published <= set(stored)


async def test_sqlite_on_a_full_disk_keeps_its_real_error_and_the_rows(tmp_path, small_disk):
    """SQLite's disk fills up (the journal's has room): writes fail with SQLite's own message ('database
    or disk is full', not a failed ROLLBACK), /ready says so, the rows wait in the journal, and all of
    them are stored once space is freed."""
    db = small_disk / "coby.sqlite3"
    url = f"sqlite:///{db}"
    st = open_storage(make_settings(tmp_path, db_url=url, flush_interval=0.1), url)
    await st.start()
    try:
        await st.store_trades([trade(i) for i in range(100)])
        await flushed(st)
        filler = small_disk / "filler"
        fill(filler)
        await st.store_trades([trade(i) for i in range(100, 20_100)])
        for _ in range(100):
            if not st.ready()[0]:
                break
            await asyncio.sleep(0.05)
        ok, why = st.ready()
        assert not ok and "database or disk is full" in why, why
        filler.unlink()
        await flushed(st)
        ids = [t.trade_id for t in await st.get_trades("DUR-USDT", limit=50_000)]
    finally:
        await st.aclose()
    assert len(ids) == len(set(ids)) == 20_100


async def test_sigterm_during_outage_then_a_start_still_down_then_up(pg_url, tmp_path, proxy):
    """`coby run` stopped by SIGTERM while the database is cut exits 0 promptly, rejecting nothing; the
    next start with the database still down starts and serves (storage down); once the database
    answers, every trade the first run published is stored, once."""
    from tests.conftest import free_port
    _clear_binance(pg_url)
    data, port, sim = tmp_path / "data", free_port(), free_port()
    proc = _spawn(data, via(proxy, pg_url), port, sim, "BTC-USDT")
    try:
        # _collect_then_kill with SIGTERM instead of SIGKILL: cut half-way, then terminate
        proc.kill = proc.terminate  # type: ignore[method-assign]
        seen, _ = await _collect_then_kill(proc, port, 8.0, proxy.cut)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
    assert not (data / "rejected").exists()
    proc2 = _spawn(data, via(proxy, pg_url), port, sim, "ETH-USDT")
    try:
        deadline = time.monotonic() + 60
        while (st := await _status(port)) is None:
            assert proc2.poll() is None, proc2.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert st["storage"]["state"] == "down" and st["storage"]["journal_bytes"] > 0
        proxy.restore()
        while True:
            st = await _status(port)
            if st and st["storage"]["state"] == "up" and st["storage"]["journal_bytes"] == 0:
                break
            assert time.monotonic() < deadline + 60, f"backlog not written: {st and st['storage']}"
            await asyncio.sleep(0.3)
    finally:
        proc2.terminate()
        await asyncio.to_thread(proc2.wait, 60)
    stored = _stored_btc(pg_url)
    assert all(n == 1 for n in stored.values())
    assert set(seen) <= set(stored), f"{len(set(seen) - set(stored))} published trades not stored"
    assert not (data / "rejected").exists()


async def test_a_record_that_is_not_rows_is_skipped_never_run(tmp_path):
    """A record whose checksum holds but whose payload names something other than a row value (a
    pickled function, planted or garbled) is skipped and counted: the journal's reader resolves no
    global but datetime's, so nothing in a journal file is ever executed."""
    import pickle
    import zlib
    from coby.db.journal import MAGIC
    from coby.db.tables import trade_row
    j = Journal(tmp_path, TRADES)
    j.open()
    j.append([trade_row(trade(1))])
    evil = pickle.dumps([(os.system, ("touch " + str(tmp_path / "pwned"),))])
    os.write(j._fd, HEADER.pack(MAGIC, len(evil), zlib.crc32(evil)) + evil)
    j.durable = type(j.durable)(j.active, j.durable.offset + HEADER.size + len(evil))
    j.append([trade_row(trade(2))])
    j.sync()
    chunk = j.read(j.committed, j.durable, 100)
    assert [r[6] for r in chunk.rows] == ["t1", "t2"]
    assert chunk.skipped_bytes == HEADER.size + len(evil)
    assert not (tmp_path / "pwned").exists()
    j.close()


async def test_full_disk_under_a_live_daemon_keeps_the_live_channels_flowing(pg_url, tmp_path, small_disk):
    """A live daemon (simulator, binance) whose data_dir fills up: the trades channel keeps flowing,
    /ready says 'No space left on device', every trade published is either stored or counted lost
    (exactly), and once space is freed storage is ready again."""
    import aiohttp
    import orjson

    from coby.daemon import Daemon
    from tests.conftest import free_port
    _clear_binance(pg_url)
    settings = make_settings(tmp_path, db_url=pg_url, simulate=True, simulator_port=0, api_port=free_port(),
                             exchanges="binance", symbols="BTC-USDT", flush_interval=0.2,
                             data_dir=str(small_disk / "data"))
    lost0 = LOST_ROWS.labels(TRADES.name, "journal_write_failed")._value.get()
    d = Daemon(settings)
    await d.start()
    sub = d.cache.subscribe("trades:BTC-USDT", maxsize=100_000)
    base = f"http://127.0.0.1:{d.api_port}"
    published: set[str] = set()

    def drain() -> int:
        n = 0
        while not sub.queue.empty():
            data = orjson.loads(sub.queue.get_nowait()[1])["data"]
            published.add(f'{data["trade_id"]}@{data["timestamp"]}')
            n += 1
        return n

    try:
        await asyncio.sleep(3)
        drain()
        filler = small_disk / "filler"
        fill(filler)
        await asyncio.sleep(4)
        during = drain()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/ready") as r:
                ready_status, ready = r.status, await r.json()
        filler.unlink()
        await asyncio.sleep(3)
        drain()
        await flushed(d.storage)
        await ready_again(d.storage)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/ready") as r:
                ready_after = (await r.json())["storage"]
    finally:
        await d.stop()
    drain()
    lost = LOST_ROWS.labels(TRADES.name, "journal_write_failed")._value.get() - lost0
    stored = _stored_btc(pg_url)
    assert during > 0, "the trades channel stopped while the disk was full"
    assert ready_status == 503 and "No space left on device" in ready["storage_error"]
    assert ready_after is True
    assert all(n == 1 for n in stored.values())
    assert lost > 0
    assert len(published - set(stored)) == lost
