"""Export throughput and memory: `coby export` of N stored trades beside a plain COPY TO of the same rows.

    PYTHONPATH=. .venv/bin/python bench/export.py [--rows 1000000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

On a scratch database (created and dropped by the script), N trades are loaded with COPY, then:
- baseline: ``COPY (SELECT <trade_events columns> ... ORDER BY key) TO STDOUT`` (text), read by psycopg
  and written to a file: the server's and the driver's ceiling for the same rows in the same order;
- baseline, binary: the same in ``FORMAT BINARY``;
- coby export, parquet and CSV (``coby.archive.export``: keyset chunks of 100,000 rows, one polars frame
  and one file per chunk and day).
Prints rows/s, the ratio to the text COPY, the files' size, and the process's resident memory (RSS,
from /proc) sampled every 50 ms during each export: the peak minus the RSS before it shows whether
memory grows with the number of rows.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg

from coby.archive import export
from coby.config import Settings
from coby.db import open_storage
from coby.db.tables import TRADES
from coby.models import utc_from_ms

T0 = utc_from_ms(1_790_000_000_000)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


class RssSampler:
    def __init__(self) -> None:
        self.peak = self.start = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss_mb()


def load(url: str, n: int) -> None:
    exchanges = ("binance", "okx", "bybit", "kraken", "coinbase")
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY trade_events (symbol, exchange, timestamp, price, size, side, trade_id, received_at) "
                      "FROM STDIN") as cp:
            for i in range(n):
                ts = T0 + timedelta(milliseconds=i * 10)  # 1M trades: ~2.8 hours, one day folder or two
                cp.write_row(("BTC-USDT", exchanges[i % 5], ts, 30000.0 + (i % 1000) * 0.1, 0.001 * (1 + i % 50),
                              "buy" if i % 2 else "sell", str(i), ts))
        cur.execute("ANALYZE trade_events")


def copy_to(url: str, path: Path, binary: bool) -> float:
    cols = ", ".join(TRADES.names)
    sql = (f"COPY (SELECT {cols} FROM trade_events ORDER BY {', '.join(TRADES.key)}) TO STDOUT"
           + (" (FORMAT BINARY)" if binary else ""))
    t = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur, path.open("wb") as fh:
        with cur.copy(sql) as cp:
            for block in cp:
                fh.write(block)
    return time.perf_counter() - t


async def coby_export(url: str, out: Path, fmt: str, n: int, data_dir: str) -> tuple[float, RssSampler]:
    storage = open_storage(Settings.load(env={}, db_url=url, data_dir=data_dir, log_level="WARNING"), url)
    await storage.connect()
    try:
        with RssSampler() as mem:
            t = time.perf_counter()
            manifest = await export(storage, out, T0, T0 + timedelta(days=2), tables=[TRADES], fmt=fmt)
            took = time.perf_counter() - t
    finally:
        await storage.disconnect()
    assert manifest["tables"]["trade_events"]["rows"] == n, manifest
    return took, mem


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()) / 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    name = f"coby_bench_export_{uuid.uuid4().hex[:6]}"
    base = args.pg.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    tmp = Path(tempfile.mkdtemp(prefix="coby-bench-export-"))
    try:
        storage = open_storage(Settings.load(env={}, db_url=url, data_dir=str(tmp / "d")), url)
        await storage.connect()
        await storage.setup_database_schema()
        await storage.disconnect()
        load(url, args.rows)
        n = args.rows
        results = []
        for label, binary in (("COPY TO (text), baseline", False), ("COPY TO (binary)", True)):
            took = copy_to(url, tmp / f"copy-{binary}", binary)
            results.append((label, took, size_mb(tmp / f"copy-{binary}"), None))
        for fmt in ("parquet", "csv"):
            took, mem = await coby_export(url, tmp / f"export-{fmt}", fmt, n, str(tmp / "d"))
            results.append((f"coby export --format {fmt}", took, size_mb(tmp / f"export-{fmt}"), mem))
        base_rate = n / results[0][1]
        print(f"{n:,} trades")
        print("| path | seconds | rows/s | vs COPY TO | output MB | RSS before / peak / after, MB |")
        print("|---|---|---|---|---|---|")
        for label, took, mb, mem in results:
            m = "-" if mem is None else f"{mem.start:.0f} / {mem.peak:.0f} / {mem.end:.0f}"
            print(f"| {label} | {took:.2f} | {n / took:,.0f} | {n / took / base_rate * 100:.0f} % | {mb:.1f} | {m} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
