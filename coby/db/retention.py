"""Retention: rows older than their table's window are deleted, in every storage mode.

Windows (``Settings.retention``): ``snapshot_retention_days`` for order_book_snapshots (most of the
volume), ``retention_days`` for every other table; 0 keeps everything. Unset, SQLite keeps 7 days
(snapshots 2) and PostgreSQL everything.

- TimescaleDB (modes ``timescaledb``, ``timescaledb-apache``): its own retention policy drops whole
  chunks (``db/timescale.py``); this job does nothing there.
- SQLite and plain PostgreSQL: an owned task, off the hot path, every ``retention_interval`` (the
  first pass a minute after start) deletes old rows table by table in batches of at most
  ``retention_batch`` rows, each batch its own short transaction (``Storage.delete_before``), so the
  write path waits at most one batch. The daemon keeps writing meanwhile; the next batch runs after
  a yield to the event loop. Deleted rows are counted in ``coby_retention_deleted_rows_total``;
  a database that does not answer is skipped until the next pass (logged).

SQLite reuses the pages it frees: the file stops growing once the window is full; it does not
shrink (``VACUUM`` while stopped reclaims the space, see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog

from coby.db.tables import SNAPSHOTS, TABLES, Table
from coby.errors import StorageUnavailable
from coby.metrics import RETENTION_DELETED, RETENTION_LAST_RUN

log = structlog.get_logger("coby.storage")

FIRST_PASS_DELAY = 60.0  # seconds after start: leave start-up (migrations, journal backlog) alone


def windows(storage: Any) -> dict[Table, timedelta]:
    """Each table's retention window for this storage (tables kept whole are left out)."""
    days, snapshot_days = storage.settings.retention(sqlite=storage.kind == "sqlite")
    out = {}
    for table in TABLES.values():
        d = snapshot_days if table is SNAPSHOTS else days
        if d > 0:
            out[table] = timedelta(days=d)
    return out


class Retention:
    """The retention job of one storage: ``start()`` / ``aclose()``; ``run_once()`` for one pass."""

    def __init__(self, storage: Any, *, clock: Any = time.time, first_delay: float = FIRST_PASS_DELAY) -> None:
        self.storage = storage
        self.settings = storage.settings
        self.clock = clock
        self.first_delay = first_delay
        self.task: asyncio.Task | None = None

    @property
    def applies(self) -> bool:
        """False under TimescaleDB (its policies do it) or when every table is kept whole."""
        return not self.storage.mode.startswith("timescaledb") and bool(windows(self.storage))

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="coby-retention")

    async def aclose(self) -> None:
        if self.task is not None:
            task, self.task = self.task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            try:
                await self.run_once()
            except StorageUnavailable as e:
                log.warning("retention_skipped", error=str(e))
            except Exception:  # noqa: BLE001 - a failed pass is logged; the next one runs
                log.exception("retention_failed")
            await asyncio.sleep(self.settings.retention_interval)

    async def run_once(self) -> dict[str, int]:
        """One pass over every table with a window: delete what is older, batch by batch."""
        if self.storage.mode == "unknown":  # not migrated yet: which mode (TimescaleDB or not) is unknown
            raise StorageUnavailable("the database has not answered yet")
        if not self.applies:
            return {}
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        batch = self.settings.retention_batch
        deleted: dict[str, int] = {}
        for table, window in windows(self.storage).items():
            cutoff, total = now - window, 0
            while True:
                n = await self.storage.delete_before(table, cutoff, batch)
                total += n
                RETENTION_DELETED.labels(table.name).inc(n)
                if n == 0:
                    break
                await asyncio.sleep(0)  # the event loop (and the writer) get their turn between batches
            deleted[table.name] = total
            if total:
                log.info("retention_deleted", table=table.name, rows=total, before=cutoff.isoformat())
        RETENTION_LAST_RUN.set(self.clock())
        return deleted
