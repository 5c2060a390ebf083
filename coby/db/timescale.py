"""TimescaleDB set-up, applied after the migrations, in whichever mode the server allows.

Written from TimescaleDB's documentation (the extension cannot be installed on the
development machine); every step degrades instead of failing:

- ``CREATE EXTENSION IF NOT EXISTS timescaledb`` fails (not installed, not preloaded,
  no privilege): mode ``postgresql`` - the same tables with their time indexes.
- It succeeds: each table becomes a hypertable on ``timestamp``
  (``create_hypertable(..., chunk_time_interval => ..., if_not_exists => TRUE,
  migrate_data => TRUE)``; the signature every 2.x release accepts). Every primary key
  leads with ``timestamp``, as hypertables require of unique indexes.
- Compression (``ALTER TABLE ... SET (timescaledb.compress, timescaledb.compress_segmentby
  = 'symbol, exchange', timescaledb.compress_orderby = 'timestamp DESC')`` and
  ``add_compression_policy(..., compress_after => ..., if_not_exists => TRUE)``) is a
  Community-licence feature. Under the Apache-licensed build
  (``current_setting('timescaledb.license') = 'apache'``) it is skipped; if the server
  refuses it anyway ("functionality not supported under the current "apache" license",
  "columnstore not enabled") the refusal is caught: mode ``timescaledb-apache``,
  hypertables and retention without compression.
- Retention (``add_retention_policy``) only when the table's window is > 0 (``retention_days``;
  ``snapshot_retention_days`` for order_book_snapshots); a changed window replaces the old policy
  (``if_not_exists`` would silently keep it). coby's own retention job (``db/retention.py``) leaves
  hypertables to these policies.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import structlog

from coby.config import Settings

log = structlog.get_logger("coby.storage")

# table -> (chunk interval, compress segmentby). Chunks sized so a day of the busiest
# tables at nominal rates stays well within memory (TimescaleDB's sizing advice: the
# indexes of the newest chunks should fit in about a quarter of RAM).
HYPERTABLES: dict[str, tuple[timedelta, str]] = {
    "order_book_snapshots": (timedelta(hours=6), "symbol, exchange"),
    "trade_events": (timedelta(hours=6), "symbol, exchange"),
    "heatmap_data": (timedelta(days=1), "symbol"),
    "ohlcv_data": (timedelta(days=7), "symbol, exchange, timeframe"),
    "connection_events": (timedelta(days=7), "exchange"),
}


async def _try(conn: psycopg.AsyncConnection, sql: str, params: tuple = ()) -> psycopg.Error | None:
    """Run one statement in a savepoint; return the error instead of raising."""
    try:
        async with conn.transaction():
            await conn.execute(sql, params)
    except psycopg.Error as e:
        return e
    return None


async def setup_timescale(conn: psycopg.AsyncConnection, settings: Settings) -> str:
    """Make what TimescaleDB allows of the schema; return the mode in force."""
    err = await _try(conn, "CREATE EXTENSION IF NOT EXISTS timescaledb")
    if err is not None:
        log.info("storage_mode", mode="postgresql",
                 reason=f"TimescaleDB extension unavailable: {str(err).strip().splitlines()[0]}")
        return "postgresql"
    cur = await conn.execute("SELECT current_setting('timescaledb.license', true)")
    row = await cur.fetchone()
    license_ = (row[0] if row else None) or "timescale"
    compress = license_ != "apache"
    days, snapshot_days = settings.retention(sqlite=False)
    for table, (chunk, segmentby) in HYPERTABLES.items():
        err = await _try(conn, "SELECT create_hypertable(%s, 'timestamp', chunk_time_interval => %s, "
                               "if_not_exists => TRUE, migrate_data => TRUE)", (table, chunk))
        if err is not None:
            raise err
        if compress:
            err = await _try(conn, f"ALTER TABLE {table} SET (timescaledb.compress, "
                                   f"timescaledb.compress_segmentby = '{segmentby}', "
                                   "timescaledb.compress_orderby = 'timestamp DESC')")
            if err is None:
                err = await _try(conn, "SELECT add_compression_policy(%s, compress_after => %s, if_not_exists => TRUE)",
                                 (table, timedelta(hours=settings.compress_after_hours)))
            if err is not None:
                compress = False
                log.info("storage_compression_unavailable", error=str(err).strip().splitlines()[0])
        await _set_retention(conn, table, snapshot_days if table == "order_book_snapshots" else days)
    mode = "timescaledb" if compress else "timescaledb-apache"
    log.info("storage_mode", mode=mode, license=license_, compression=compress,
             retention_days=days or None, snapshot_retention_days=snapshot_days or None)
    return mode


async def _set_retention(conn: psycopg.AsyncConnection, table: str, days: float) -> None:
    cur = await conn.execute(
        "SELECT (config->>'drop_after') FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_retention' AND hypertable_name = %s", (table,))
    row = await cur.fetchone()
    want = timedelta(days=days) if days > 0 else None
    if row is not None:
        await _try(conn, "SELECT remove_retention_policy(%s, if_exists => TRUE)", (table,))
    if want is not None:
        err = await _try(conn, "SELECT add_retention_policy(%s, drop_after => %s, if_not_exists => TRUE)",
                         (table, want))
        if err is not None:
            log.warning("storage_retention_failed", table=table, error=str(err).strip().splitlines()[0])
