"""Storage write throughput: coby's write path beside raw binary COPY, in one run.

    .venv/bin/python bench/storage.py [--rows 200000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

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


async def through_storage(url: str, trades: list[TradeEvent], batch: int, data_dir: str) -> tuple[float, float]:
    settings = Settings.load(env={}, db_url=url, data_dir=data_dir, batch_write_size=batch,
                             data_buffer_size=max(batch, 10_000), flush_interval=3600.0, log_level="WARNING")
    st = open_storage(settings, url)
    await st.start()
    try:
        t0 = time.perf_counter()
        for i in range(0, len(trades), batch):
            await st.store_trades(trades[i:i + batch])
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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    trades = make_trades(args.rows)
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rpartition("/")[0] + "/" + name
    tmp = tempfile.mkdtemp()
    try:
        raw = await raw_copy(url, trades, args.batch)
        pg_w, pg_r = await through_storage(url, trades, args.batch, tmp + "/pg")
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
    print(f"coby PostgreSQL write (dedup-safe)       {n / pg_w:>10,.0f} rows/s  {raw / pg_w:.2f} of the baseline's rate")
    print(f"coby PostgreSQL all-duplicate batches    {len(trades) // 2 / dup_w:>10,.0f} rows/s  (every row already stored: all counted as duplicates)")
    print(f"coby SQLite write                        {n / sq_w:>10,.0f} rows/s")
    print(f"coby PostgreSQL iter_trades read         {n / pg_r:>10,.0f} rows/s")
    print(f"coby SQLite iter_trades read             {n / sq_r:>10,.0f} rows/s")


if __name__ == "__main__":
    asyncio.run(main())
