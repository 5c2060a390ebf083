"""SQLite backend: the embedded default, so that ``coby run`` works on a bare machine.

Same tables, keys and semantics as PostgreSQL (``migrations/sqlite``). WAL journal;
each batch is one transaction of ``INSERT OR IGNORE`` (events) or ``INSERT ... ON
CONFLICT DO UPDATE`` (OHLCV, heatmap). All SQLite calls run off the event loop: writes
on one dedicated thread, reads on another with its own connection (WAL lets them
proceed side by side). Timestamps are stored as integer microseconds since the epoch.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import structlog

from coby.config import Settings
from coby.db.base import Storage
from coby.db.migrations import CREATE_TABLE, load_migrations
from coby.db.tables import TABLES, Table, dedupe_last
from coby.errors import StorageError, StorageRefused, StorageUnavailable

log = structlog.get_logger("coby.storage")
T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(ts: datetime) -> int:
    d = ts - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _insert_sql(t: Table) -> str:
    names = ", ".join(t.names)
    marks = ", ".join("?" * len(t.names))
    if t.upsert:
        updates = ", ".join(f"{n} = excluded.{n}" for n in t.names if n not in t.key)
        return f"INSERT INTO {t.name} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(t.key)}) DO UPDATE SET {updates}"
    return f"INSERT OR IGNORE INTO {t.name} ({names}) VALUES ({marks})"


_INSERT = {t.name: _insert_sql(t) for t in TABLES.values()}


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise StorageError(f"not an SQLite URL: {url!r} (expected sqlite:///path)")
    return Path(url[len("sqlite:///"):])


class SqliteStorage(Storage):
    kind = "sqlite"
    mode = "sqlite"
    placeholder = "?"

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        super().__init__(settings)
        self.path = sqlite_path(url or settings.storage_url)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="coby-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="coby-sqlite-r")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    async def _on(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def connect(self) -> None:
        if self._wconn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wconn = await self._on(self._writer, self._open)
            self._rconn = await self._on(self._reader, self._open)
        except (OSError, sqlite3.Error) as e:
            raise StorageUnavailable(f"cannot open SQLite database {self.path}: {e}") from e

    async def disconnect(self) -> None:
        for attr, pool in (("_wconn", self._writer), ("_rconn", self._reader)):
            conn = getattr(self, attr)
            if conn is not None:
                setattr(self, attr, None)
                await self._on(pool, conn.close)
        self._writer.shutdown(wait=False)
        self._reader.shutdown(wait=False)

    def _conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StorageUnavailable("SQLite database is not open")
        return self._wconn

    async def setup_database_schema(self) -> None:
        conn = self._conn()

        def migrate() -> list[tuple[int, str]]:
            applied = []
            conn.execute(CREATE_TABLE)
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for m in load_migrations("sqlite"):
                if m.version in done:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _statements(m.sql):
                        conn.execute(stmt)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                                 (m.version, m.name, datetime.now(timezone.utc).isoformat()))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                applied.append((m.version, m.name))
            return applied

        try:
            applied = await self._on(self._writer, migrate)
        except sqlite3.OperationalError as e:
            raise StorageUnavailable(f"SQLite unavailable: {e}") from e
        for version, name in applied:
            log.info("migration_applied", version=version, name=name)
        log.info("storage_mode", mode="sqlite", path=str(self.path))

    async def write_batch(self, table: Table, rows: list[tuple]) -> int:
        if not rows:
            return 0
        if table.upsert:
            rows = dedupe_last(table, rows)
        ts_idx = table.ts_indexes
        sql = _INSERT[table.name]
        conn = self._conn()

        def write() -> int:
            converted = []
            for r in rows:
                r = list(r)
                for i in ts_idx:
                    if r[i] is not None:
                        r[i] = _us(r[i])
                converted.append(r)
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, converted)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)  # SQLite may have rolled back already (disk full): keep the real error
                raise
            return conn.total_changes - before

        try:
            return await self._on(self._writer, write)
        except (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, TypeError, ValueError,
                OverflowError) as e:  # this batch's content
            raise StorageRefused(f"SQLite refused the rows: {e}") from e
        except (sqlite3.Error, OSError) as e:  # locked, disk full, I/O: keep the rows, retry later
            raise StorageUnavailable(f"SQLite unavailable: {e}") from e

    async def delete_before(self, table: Table, cutoff: datetime, limit: int) -> int:
        """Retention: the ``limit`` oldest rows before ``cutoff`` (a range of the primary key, which leads
        with timestamp), in one transaction on the writer's thread, between two batches of writes."""
        conn, cut, name = self._conn(), _us(cutoff), table.name

        def delete() -> int:
            row = conn.execute(f"SELECT timestamp FROM {name} WHERE timestamp < ? ORDER BY timestamp LIMIT 1 OFFSET ?",
                               (cut, limit)).fetchone()
            bound = cut if row is None else row[0]
            conn.execute("BEGIN IMMEDIATE")
            try:
                n = conn.execute(f"DELETE FROM {name} WHERE timestamp < ?", (bound,)).rowcount
                if n == 0 and row is not None:  # more than ``limit`` rows share the oldest timestamp
                    n = conn.execute(f"DELETE FROM {name} WHERE timestamp <= ?", (bound,)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return n

        try:
            return await self._on(self._writer, delete)
        except (sqlite3.Error, OSError) as e:
            raise StorageUnavailable(f"SQLite unavailable: {e}") from e

    def adapt_ts(self, ts: datetime) -> Any:
        return _us(ts)

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        conn = self._rconn
        if conn is None:
            raise StorageUnavailable("SQLite database is not open")
        # which output columns are timestamps: from the table named in the query
        table = next((t for name, t in TABLES.items() if f" FROM {name}" in sql), None)
        ts_idx = table.ts_indexes if table is not None else ()

        def read() -> list[tuple]:
            rows = conn.execute(sql, list(params)).fetchall()
            if not ts_idx:
                return rows
            out = []
            for r in rows:
                r = list(r)
                for i in ts_idx:
                    if r[i] is not None:
                        r[i] = _dt(r[i])
                out.append(tuple(r))
            return out

        try:
            return await self._on(self._reader, read)
        except sqlite3.OperationalError as e:
            raise StorageUnavailable(f"SQLite unavailable: {e}") from e


def _statements(sql: str) -> list[str]:
    """Split a migration file into statements (no semicolons inside our SQLite DDL strings)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # the original error is the one that matters
            pass
