"""Storage write throughput: coby's write path beside raw binary COPY, in one run.

    .venv/bin/python bench/storage.py [--rows 200000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
    .venv/bin/python bench/storage.py --backlog 1000000      # a journal backlog drains: rate, RSS
    .venv/bin/python bench/storage.py --saturate 20          # stored rows/s while ingest saturates the loop
    PYTHONPATH=<older checkout> .venv/bin/python bench/storage.py --saturate 20   # the same, older code

Measures, on a scratch database created and dropped by the script:
- baseline: psycopg 3 binary COPY of the same trade rows into an unkeyed copy of trade_events
  (no dedup: the machine's ceiling; limits.md measured 166k-411k rows/s depending on batch size);
- coby PostgreSQL: ``Storage.store_trades`` + ``flush`` in batches of ``batch_write_size`` (binary COPY
  into a staging table + ``INSERT ... ON CONFLICT DO NOTHING``: dedup-safe), and all-duplicate batches;
- coby SQLite: the same through the SQLite backend;
- read-back: ``iter_trades`` over the whole range (replay's path), rows/s.
Prints rows/s and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from datetime import timedelta

import psycopg

from coby.config import Settings
from coby.db import open_storage
from coby.models import TradeEvent, utc_from_ms


def make_trades(n: int) -> list[TradeEvent]:
    t0 = utc_from_ms(1_790_000_000_000)
    exchanges = ("binance", "okx", "bybit", "kraken", "coinbase")
    return [TradeEvent("BTC-USDT", exchanges[i % 5], t0 + timedelta(milliseconds=i), 30000.0 + (i % 1000) * 0.1,
                       0.001 * (1 + i % 50), "buy" if i % 2 else "sell", str(i), t0) for i in range(n)]


async def raw_copy(url: str, trades: list[TradeEvent], batch: int) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE raw_trades (symbol text, exchange text, timestamp timestamptz, "
                           "price float8, size float8, side text, trade_id text, received_at timestamptz)")
        rows = [(t.symbol, t.exchange, t.timestamp, t.price, t.size, t.side, t.trade_id, t.received_at)
                for t in trades]
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                async with conn.cursor().copy("COPY raw_trades FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "text", "timestamptz", "float8", "float8", "text", "text", "timestamptz"])
                    for r in rows[i:i + batch]:
                        await cp.write_row(r)
        return time.perf_counter() - t0


async def through_storage(url: str, trades: list[TradeEvent], batch: int, data_dir: str,
                          hold: int = 10_000) -> tuple[float, float]:
    """All rows offered at once (``batch`` at a time, yielding between), then ``flush`` (journalled,
    fsynced, written): the write path's rate, journal included. ``hold``: data_buffer_size, the rows
    kept in memory once journalled; beyond it the writer reads them back from the journal."""
    settings = Settings.load(env={}, db_url=url, data_dir=data_dir, batch_write_size=batch,
                             data_buffer_size=max(batch, hold), flush_interval=3600.0, log_level="WARNING")
    st = open_storage(settings, url)
    await st.start()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(trades), batch):  # rows arrive as a stream, the write path keeps up on its own
            await st.store_trades(trades[i:i + batch])
            await asyncio.sleep(0)
        await st.flush()
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        async for chunk in st.iter_trades(trades[0].timestamp, trades[-1].timestamp + timedelta(seconds=1),
                                          chunk=10_000):
            n += len(chunk)
        read_s = time.perf_counter() - t0
        assert n >= len(trades), (n, len(trades))
        return write_s, read_s
    finally:
        await st.aclose()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _db(pg: str) -> tuple[str, str]:
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, pg.rpartition("/")[0] + "/" + name


def _drop(pg: str, name: str) -> None:
    with psycopg.connect(pg, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def backlog(pg: str, rows: int) -> None:
    """``rows`` trades journalled while the database is unreachable, then a new storage drains them:
    the drain rate and the process's RSS while it drains (it must stay flat)."""
    name, url = _db(pg)
    tmp = tempfile.mkdtemp()
    try:
        dead = url.replace("127.0.0.1:5432", "127.0.0.1:9")  # nothing listens: the database is down
        settings = Settings.load(env={}, db_url=dead, data_dir=tmp, log_level="WARNING", shutdown_timeout=2.0)
        st = open_storage(settings, dead)
        await st.start()
        t0 = utc_from_ms(1_790_000_000_000)
        exchanges = ("binance", "okx", "bybit", "kraken", "coinbase")
        for k in range(0, rows, 10_000):
            await st.store_trades([TradeEvent("BTC-USDT", exchanges[i % 5], t0 + timedelta(milliseconds=i),
                                              30000.0 + (i % 1000) * 0.1, 0.001 * (1 + i % 50),
                                              "buy" if i % 2 else "sell", str(i), t0)
                                   for i in range(k, min(rows, k + 10_000))])
            await st.buffer._journal_now()
        journal_bytes = st.buffer.journal_bytes()
        await st.aclose()
        import gc
        gc.collect()
        settings = Settings.load(env={}, db_url=url, data_dir=tmp, log_level="WARNING")
        st = open_storage(settings, url)
        rss = [rss_mb()]
        t_start = time.perf_counter()
        await st.start()
        while st.buffer.journal_bytes() > 0 or st.buffer.state != "up":
            await asyncio.sleep(0.25)
            rss.append(rss_mb())
        took = time.perf_counter() - t_start
        n = (await st.fetch("SELECT count(*) FROM trade_events", []))[0][0]
        await st.aclose()
        print(f"backlog: {rows:,} rows ({journal_bytes / 1e6:.0f} MB of journal) drained in {took:.1f} s = "
              f"{n / took:,.0f} rows/s; stored {n:,}; RSS at start {rss[0]:.0f} MB, while draining "
              f"min {min(rss):.0f} / max {max(rss):.0f} MB")
    finally:
        _drop(pg, name)
        shutil.rmtree(tmp, ignore_errors=True)


async def saturate(pg: str, seconds: float, offered: int) -> None:
    """Rows stored per second while the event loop is saturated: a task that computes for 9 ms, yields,
    and computes again (ingest at its ceiling), and a producer offering ``offered`` trades/s."""
    name, url = _db(pg)
    tmp = tempfile.mkdtemp()
    try:
        settings = Settings.load(env={}, db_url=url, data_dir=tmp, log_level="WARNING", shutdown_timeout=2.0)
        st = open_storage(settings, url)
        await st.start()
        await asyncio.sleep(0.5)
        stop = time.perf_counter() + seconds
        t0 = utc_from_ms(1_790_000_000_000)

        async def hog() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                while time.perf_counter() - t < 0.009:
                    pass
                await asyncio.sleep(0)

        async def produce() -> int:
            i, began = 0, time.perf_counter()
            while time.perf_counter() < stop:  # catch up with the offered rate at every wake-up
                n = min(20_000, int(offered * (time.perf_counter() - began)) - i)
                await st.store_trades([TradeEvent("BTC-USDT", "binance", t0 + timedelta(microseconds=j), 30000.0,
                                                  0.01, "buy", str(j), t0) for j in range(i, i + n)])
                i += n
                await asyncio.sleep(0.005)
            return i

        start = time.perf_counter()
        _, sent = await asyncio.gather(hog(), produce())
        elapsed = time.perf_counter() - start
        stored = (await st.fetch("SELECT count(*) FROM trade_events", []))[0][0]
        print(f"saturated loop, {seconds:.0f} s: offered {sent / elapsed:,.0f} rows/s, stored during the run "
              f"{stored / elapsed:,.0f} rows/s ({stored:,} of {sent:,})")
        await st.aclose()
    finally:
        _drop(pg, name)
        shutil.rmtree(tmp, ignore_errors=True)


async def raw_copy_keyed(url: str, trades: list[TradeEvent], batch: int) -> float:
    """Binary COPY into a table like trade_events with its primary key and indexes (no dedup): what any
    writer of these rows into the keyed table pays."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE raw_keyed (LIKE trade_events INCLUDING ALL)")
        rows = [(t.symbol, t.exchange, t.timestamp, t.price, t.size, t.side, t.trade_id, t.received_at)
                for t in trades]
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                async with conn.cursor().copy("COPY raw_keyed (symbol, exchange, timestamp, price, size, side, "
                                              "trade_id, received_at) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "text", "timestamptz", "float8", "float8", "text", "text", "timestamptz"])
                    for r in rows[i:i + batch]:
                        await cp.write_row(r)
        return time.perf_counter() - t0


def _truncate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE trade_events")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--backlog", type=int, default=0, help="drain a journal backlog of this many rows")
    ap.add_argument("--saturate", type=float, default=0, help="seconds of the saturated-loop run")
    ap.add_argument("--offered", type=int, default=50_000, help="trades/s offered in the saturated-loop run")
    args = ap.parse_args()
    if args.backlog:
        return await backlog(args.pg, args.backlog)
    if args.saturate:
        return await saturate(args.pg, args.saturate, args.offered)
    trades = make_trades(args.rows)
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rpartition("/")[0] + "/" + name
    tmp = tempfile.mkdtemp()
    try:
        raw = await raw_copy(url, trades, args.batch)
        pg_w, pg_r = await through_storage(url, trades, args.batch, tmp + "/pg")
        await asyncio.to_thread(_truncate, url)
        pg_mem, _ = await through_storage(url, trades, args.batch, tmp + "/pg2", hold=len(trades))
        keyed = await raw_copy_keyed(url, trades, args.batch)
        dup_rows = trades[: args.rows // 2]  # every batch holds stored keys: the fallback every time
        dup_w, _ = await through_storage(url, dup_rows, args.batch, tmp + "/pg3")
        sq_w, sq_r = await through_storage(f"sqlite:///{tmp}/b.sqlite3", trades, args.batch, tmp + "/sq")
    finally:
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.rows
    print(f"rows={n} batch={args.batch}")
    print(f"baseline raw binary COPY (no dedup)      {n / raw:>10,.0f} rows/s")
    print(f"raw binary COPY into the keyed table     {n / keyed:>10,.0f} rows/s  (primary key and indexes, no dedup)")
    print(f"coby PostgreSQL write (dedup-safe)       {n / pg_w:>10,.0f} rows/s  {raw / pg_w:.2f} of the baseline's rate"
          f"  (journal included; beyond data_buffer_size=10,000 read back from disk)")
    print(f"  the same, all rows held in memory      {n / pg_mem:>10,.0f} rows/s  {raw / pg_mem:.2f} of the baseline's rate"
          f"  (data_buffer_size >= rows: the writer never reads the journal back)")
    print(f"  against the keyed COPY: {keyed / pg_w:.2f} (default), {keyed / pg_mem:.2f} (held in memory)")
    print(f"coby PostgreSQL all-duplicate batches    {len(trades) // 2 / dup_w:>10,.0f} rows/s  (every row already stored: all counted as duplicates)")
    print(f"coby SQLite write                        {n / sq_w:>10,.0f} rows/s")
    print(f"coby PostgreSQL iter_trades read         {n / pg_r:>10,.0f} rows/s")
    print(f"coby SQLite iter_trades read             {n / sq_r:>10,.0f} rows/s")


if __name__ == "__main__":
    asyncio.run(main())
