"""The write buffer: bounded per table, flushed in batches, never losing a row.

Rows wait in memory until ``batch_write_size`` rows of one table are waiting or
``flush_interval`` has passed, then go to the backend in one batch.

- Database unreachable (``StorageUnavailable``): the batch goes back to the front
  of its buffer and the flush is retried with exponential backoff.
- A batch the database refuses for its data (a value out of range...): it is split
  in halves until the bad rows are isolated; those are written to
  ``data_dir/rejected/<table>.jsonl`` and counted, the rest is stored.
- Buffer full (``data_buffer_size`` rows of one table waiting): with the 'spill'
  policy (default) the row is appended to ``data_dir/spill/<table>.jsonl`` and loaded
  into the database once it keeps up again; with 'drop' it is dropped. Both are
  counted in ``coby_storage_overflow_rows_total`` and logged.
- ``aclose()`` flushes everything; what cannot be written in time is spilled, and the
  spill is loaded at the next start. Writes are idempotent (keys), so loading a spill
  twice stores each row once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Awaitable, Callable, Protocol

import structlog

from coby.config import Settings
from coby.db.tables import Table, row_from_json, row_to_json
from coby.errors import StorageUnavailable
from coby.metrics import BUFFER_DEPTH, FLUSH_FAILURES, OVERFLOW, ROWS_DUPLICATE, ROWS_WRITTEN, WRITE_LATENCY

log = structlog.get_logger("coby.storage")


class BatchSink(Protocol):
    async def write_batch(self, table: Table, rows: list[tuple]) -> int:
        """Store rows idempotently; return how many were new. Raise StorageUnavailable when unreachable."""


class WriteBuffer:
    def __init__(self, sink: BatchSink, settings: Settings,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sink = sink
        self._batch = settings.batch_write_size
        self._capacity = settings.data_buffer_size
        self._interval = settings.flush_interval
        self._policy = settings.buffer_full_policy
        self._dir = Path(settings.data_dir)
        self._sleep = sleep
        self._rows: dict[Table, list[tuple]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._spill_files: dict[str, object] = {}
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._backoff = 0.0
        self.healthy = True

    # --- intake (called on the event loop, never blocks) ----------------------------------
    def add(self, table: Table, row: tuple) -> bool:
        """Queue one row. Returns False only when it was dropped (policy 'drop', buffer full)."""
        rows = self._rows[table]
        if len(rows) >= self._capacity or self._closed:
            return self._overflow(table, [row])
        rows.append(row)
        if len(rows) >= self._batch:
            self._wake.set()
        return True

    def add_many(self, table: Table, new_rows: list[tuple]) -> bool:
        rows = self._rows[table]
        room = 0 if self._closed else max(0, self._capacity - len(rows))
        rows.extend(new_rows[:room])
        ok = True
        if room < len(new_rows):
            ok = self._overflow(table, new_rows[room:])
        if len(rows) >= self._batch:
            self._wake.set()
        return ok

    def pending(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def _overflow(self, table: Table, rows: list[tuple]) -> bool:
        if self._policy == "drop":
            OVERFLOW.labels(table.name, "dropped").inc(len(rows))
            log.warning("storage_buffer_full_dropped", table=table.name, rows=len(rows))
            return False
        self._append_file("spill", table, rows)
        OVERFLOW.labels(table.name, "spilled").inc(len(rows))
        return True

    # --- files ------------------------------------------------------------------------------
    def _append_file(self, kind: str, table: Table, rows: list[tuple]) -> None:
        key = f"{kind}/{table.name}"
        fh = self._spill_files.get(key)
        if fh is None:
            path = self._dir / kind / f"{table.name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = path.open("ab")
            self._spill_files[key] = fh
            log.warning("storage_writing_to_file", kind=kind, path=str(path))
        for r in rows:
            fh.write(row_to_json(table, r) + b"\n")  # type: ignore[attr-defined]

    def _close_files(self) -> None:
        for fh in self._spill_files.values():
            fh.close()  # type: ignore[attr-defined]
        self._spill_files.clear()

    async def _drain_spill(self) -> None:
        """Load spilled rows into the database (after an outage, or from an earlier run)."""
        spill_dir = self._dir / "spill"
        if not spill_dir.is_dir():
            return
        for path in sorted(spill_dir.glob("*.jsonl")):
            key = f"spill/{path.stem}"
            if key in self._spill_files:
                self._spill_files.pop(key).close()  # type: ignore[attr-defined]
            draining = path.with_suffix(".draining")
            os.replace(path, draining)
            await self._load_file(draining)
        for draining in sorted(spill_dir.glob("*.draining")):
            await self._load_file(draining)

    async def _load_file(self, path: Path) -> None:
        by_table: dict[Table, list[tuple]] = defaultdict(list)
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    table, row = row_from_json(line)
                    by_table[table].append(row)
        for table, rows in by_table.items():
            for i in range(0, len(rows), max(self._batch, 1000)):
                await self._write(table, rows[i:i + max(self._batch, 1000)])
        path.unlink()
        log.info("storage_spill_loaded", path=str(path), rows=sum(len(r) for r in by_table.values()))

    # --- flushing ---------------------------------------------------------------------------
    async def _write(self, table: Table, rows: list[tuple]) -> None:
        """Write one batch; isolate rows the database refuses. StorageUnavailable propagates."""
        t0 = time.perf_counter()
        try:
            inserted = await self._sink.write_batch(table, rows)
        except StorageUnavailable:
            raise
        except Exception as e:  # the data was refused: find the bad rows, keep the rest
            if len(rows) == 1:
                self._append_file("rejected", table, rows)
                log.error("storage_row_rejected", table=table.name, error=str(e).strip()[:300], row=repr(rows[0])[:300])
                OVERFLOW.labels(table.name, "rejected").inc()
                return
            mid = len(rows) // 2
            await self._write(table, rows[:mid])
            await self._write(table, rows[mid:])
            return
        WRITE_LATENCY.labels(table.name).observe(time.perf_counter() - t0)
        ROWS_WRITTEN.labels(table.name).inc(inserted)
        if len(rows) > inserted:
            ROWS_DUPLICATE.labels(table.name).inc(len(rows) - inserted)

    async def flush(self) -> None:
        """Write everything buffered now. Raises StorageUnavailable (rows kept) when unreachable."""
        async with self._flush_lock:
            for table in list(self._rows):
                rows = self._rows[table]
                if not rows:
                    continue
                self._rows[table] = []
                try:
                    while rows:
                        batch = rows[: self._capacity]
                        await self._write(table, batch)
                        rows = rows[len(batch):]
                except BaseException:  # unreachable, or cancelled mid-flush (shutdown timeout): keep the rows
                    FLUSH_FAILURES.labels(table.name).inc()
                    # put the unwritten rows back in front; excess over capacity spills
                    merged = rows + self._rows[table]
                    self._rows[table] = merged[: self._capacity]
                    if len(merged) > self._capacity:
                        self._overflow(table, merged[self._capacity:])
                    raise
                finally:
                    BUFFER_DEPTH.labels(table.name).set(len(self._rows[table]))
            if self._spill_files or any((self._dir / "spill").glob("*.*")):
                await self._drain_spill()

    async def run(self) -> None:
        """The flusher loop: owned by the storage object, cancelled by ``aclose``."""
        delay = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(self._interval, delay))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except StorageUnavailable as e:
                self.healthy = False
                delay = min(30.0, max(0.5, delay * 2)) * (0.8 + 0.4 * random.random())
                log.warning("storage_unavailable", error=str(e), retry_in=round(delay, 2), pending=self.pending())
                await self._sleep(delay)
            else:
                if not self.healthy:
                    log.info("storage_recovered", pending=self.pending())
                self.healthy = True
                delay = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="coby-storage-flusher")

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop the flusher, flush what is left (within ``timeout``), spill the rest. Idempotent."""
        if self._closed:
            return
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except (StorageUnavailable, asyncio.TimeoutError) as e:
            log.warning("storage_close_spilling", error=str(e) or type(e).__name__, rows=self.pending())
        self._closed = True
        for table, rows in list(self._rows.items()):
            if rows:
                self._append_file("spill", table, rows)
                OVERFLOW.labels(table.name, "spilled").inc(len(rows))
                self._rows[table] = []
        self._close_files()
