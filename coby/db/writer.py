"""The writer: journalled rows to the database, in journal order, whatever the database does.

One task (``Writer.run``, owned by the ``WriteBuffer``) writes each table's next batch of up to
``max(batch_write_size, 10,000)`` rows: from memory when it keeps up (the records the journal task just
appended, at most ``data_buffer_size`` rows a table), read back from the journal in bounded chunks
when behind. After each commit the journal's cursor moves on and finished segments are deleted.

- The database unreachable, not migrated yet, or failing for any reason that is not a row's content
  (``StorageUnavailable``): state ``down``; the writer probes again every ``PROBE_INTERVAL`` (the
  backend's own direct connection, no pool in between) and writes the backlog once it answers.
- A batch refused for its content (``StorageRefused``) is split until the bad rows are isolated; only
  those go to ``data_dir/rejected/<table>.jsonl``.
- Never dies: any other error is logged at a bounded rate and the loop goes on; the rows stay in the
  journal.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from coby.db.journal import Journal, Position
from coby.db.tables import Table, row_to_json
from coby.errors import StorageRefused, StorageUnavailable
from coby.metrics import (
    BUFFER_DEPTH, FLUSH_FAILURES, JOURNAL_BYTES, JOURNAL_SKIPPED, OVERFLOW, ROWS_DUPLICATE, ROWS_WRITTEN, STORAGE_UP,
    WRITE_LATENCY,
)

log = structlog.get_logger("coby.storage")

PROBE_INTERVAL = 0.5      # seconds between attempts while the database is down
MIN_WRITE_BATCH = 10_000  # rows per database batch when a backlog drains
LOG_EVERY = 10.0          # seconds: at most one log line per kind of trouble


class BatchSink(Protocol):
    async def write_batch(self, table: Table, rows: list[tuple]) -> int:
        """Store rows idempotently; return how many were new. StorageRefused: a row's content."""

    async def prepare(self) -> None:
        """Connect and migrate if needed (called before writing after start or an outage)."""


@dataclass(slots=True)
class Lane:
    """One table's rows on their way: waiting for the journal, then held in memory for the writer."""
    journal: Journal
    waiting: list[tuple] = field(default_factory=list)
    held: deque = field(default_factory=deque)  # Chunk of records journalled and kept in memory
    held_rows: int = 0
    unwritten: int = 0                           # rows journalled by this process, not yet written
    read: Position = Position(0, 0)              # next position the writer takes
    # the end of the records taken into account (unwritten, held) on the event loop: the writer reads no
    # further. The journal's own ``durable`` moves on the journal thread before that, and rows read back
    # from there were counted written before they were counted journalled (pending() then stayed above 0)
    journalled: Position = Position(0, 0)



def journal_bytes(lanes: dict[Table, Lane]) -> int:
    return sum(lane.journal.backlog_bytes() for lane in lanes.values())


class Writer:
    def __init__(self, sink: BatchSink, lanes: dict[Table, Lane], thread: ThreadPoolExecutor, data_dir: Path,
                 batch_rows: int, idle: float) -> None:
        self._sink = sink
        self._lanes = lanes  # shared with the WriteBuffer, which fills them
        self._thread = thread  # the journal's thread: commits and rejected rows are written there
        self._dir = data_dir
        self._write_rows = max(batch_rows, MIN_WRITE_BATCH)
        self._interval = idle
        self.wake_event = asyncio.Event()
        self.progress = asyncio.Condition()
        self._last_log: dict[str, float] = {}
        self._gauges_at = 0.0
        #: "starting" (not yet written), "up", "down" (the database does not answer or refuses to migrate)
        self.state = "starting"
        self.error: str | None = None

    async def run(self) -> None:
        """Never dies: an error that is not the database's (a journal that cannot be read, a bug) is
        logged at a bounded rate and the loop goes on after a pause; the rows stay in the journal."""
        while True:
            try:
                await self._write_until_error()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - see the docstring
                now = time.monotonic()
                if now - self._last_log.get("writer", -LOG_EVERY) >= LOG_EVERY:
                    self._last_log["writer"] = now
                    log.exception("storage_writer_error", error=describe(e))
                await self._wait(PROBE_INTERVAL)

    async def _write_until_error(self) -> None:
        while True:
            if self.state != "up":
                if not await self._prepare():
                    await self._wait(PROBE_INTERVAL)
                    continue
            wrote = False
            for lane in list(self._lanes.values()):
                try:
                    wrote |= await self._write_next(lane)
                except StorageUnavailable as e:
                    self._down(str(e))
                    break
            async with self.progress:
                self.progress.notify_all()
            if time.monotonic() - self._gauges_at >= 1.0:
                self._gauges_at = time.monotonic()
                self.update_gauges()
            if not wrote and self.state == "up":
                await self._wait(max(self._interval, 0.05))
            elif self.state != "up":
                await self._wait(PROBE_INTERVAL)

    async def _wait(self, timeout: float) -> None:
        await wait_event(self.wake_event, timeout)

    async def _prepare(self) -> bool:
        try:
            await self._sink.prepare()
        except Exception as e:  # noqa: BLE001 - down until it answers; said once per state change
            self._down(describe(e))
            async with self.progress:
                self.progress.notify_all()
            return False
        if self.state != "up":
            log.info("storage_up", previous=self.state, backlog_bytes=journal_bytes(self._lanes))
        self.state, self.error = "up", None
        STORAGE_UP.set(1)
        return True

    def mark_down(self, error: str) -> None:
        """The database did not answer at start (said by the storage, which logs it)."""
        self.state, self.error = "down", error
        STORAGE_UP.set(0)

    def _down(self, error: str) -> None:
        if self.state != "down":
            log.warning("storage_down", error=error, backlog_bytes=journal_bytes(self._lanes))
        self.state, self.error = "down", error
        STORAGE_UP.set(0)

    async def _write_next(self, lane: Lane) -> bool:
        """Write the next batch of one table (from memory, or from disk when behind). True if it wrote."""
        journal = lane.journal
        while lane.held and lane.held[0].start < lane.read:  # already written (read back from disk)
            lane.held_rows -= len(lane.held.popleft().rows)
        if lane.read >= lane.journalled and not lane.held:
            return False
        if lane.held and lane.held[0].start == lane.read:
            chunks = [lane.held.popleft()]
            n = len(chunks[0].rows)
            # only records that follow one another: a record that did not fit in memory (data_buffer_size) lies
            # between two held ones on disk only, and is read back from there next
            while lane.held and lane.held[0].start == chunks[-1].end and n + len(lane.held[0].rows) <= self._write_rows:
                chunks.append(lane.held.popleft())
                n += len(chunks[-1].rows)
            lane.held_rows -= n
            rows = chunks[0].rows if len(chunks) == 1 else [r for c in chunks for r in c.rows]
            end = chunks[-1].end
        else:
            stop = lane.held[0].start if lane.held else lane.journalled
            chunk = await asyncio.get_running_loop().run_in_executor(
                None, journal.read, lane.read, stop, self._write_rows)
            if chunk.skipped_bytes:
                JOURNAL_SKIPPED.labels(journal.table.name).inc(chunk.skipped_bytes)
            rows, end = chunk.rows, chunk.end
        if rows:
            try:  # the batch is named by the journal position it ends at: its log lines carry it
                with structlog.contextvars.bound_contextvars(batch=f"{journal.table.name}@{end.segment}.{end.offset}"):
                    await self._write(journal.table, rows)
            except BaseException:  # the rows stay in the journal; lane.read has not moved: read again from disk
                FLUSH_FAILURES.labels(journal.table.name).inc()
                raise
        lane.read = end
        lane.unwritten = max(0, lane.unwritten - len(rows))
        await asyncio.get_running_loop().run_in_executor(self._thread, journal.commit, end)
        return True

    def update_gauges(self) -> None:
        """The journal and buffer gauges (the writer calls it at most once a second)."""
        for table, lane in self._lanes.items():
            JOURNAL_BYTES.labels(table.name).set(lane.journal.backlog_bytes())
            BUFFER_DEPTH.labels(table.name).set(lane.held_rows + len(lane.waiting))

    async def drained(self, raise_when_down: bool = False) -> None:
        """Return once every journalled row is written (StorageUnavailable while down, if asked)."""
        async with self.progress:
            while True:
                if all(lane.read >= lane.journalled and not lane.held for lane in self._lanes.values()):
                    return
                if raise_when_down and self.state == "down":
                    raise StorageUnavailable(self.error or "database down")
                self.wake_event.set()
                await self.progress.wait()

    async def _write(self, table: Table, rows: list[tuple]) -> None:
        """Write one batch; isolate the rows the database refuses. StorageUnavailable propagates."""
        t0 = time.perf_counter()
        try:
            inserted = await self._sink.write_batch(table, rows)
        except StorageRefused as e:
            if len(rows) == 1:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._reject, table, rows[0], str(e))
                return
            mid = len(rows) // 2
            await self._write(table, rows[:mid])
            await self._write(table, rows[mid:])
            return
        except StorageUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - not about the rows: keep them, treat as down
            raise StorageUnavailable(describe(e)) from e
        WRITE_LATENCY.labels(table.name).observe(time.perf_counter() - t0)
        ROWS_WRITTEN.labels(table.name).inc(inserted)
        if len(rows) > inserted:
            ROWS_DUPLICATE.labels(table.name).inc(len(rows) - inserted)

    def _reject(self, table: Table, row: tuple, error: str) -> None:
        path = self._dir / "rejected" / f"{table.name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as fh:
            fh.write(row_to_json(table, row) + b"\n")
        log.error("storage_row_rejected", table=table.name, error=error.strip()[:300], row=repr(row)[:300])
        OVERFLOW.labels(table.name, "rejected").inc()


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` (then clear it) or ``timeout``. asyncio.timeout, not wait_for: Python 3.11's
    wait_for swallows a cancellation that arrives as the event is set, and the task would not stop."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
    event.clear()


def describe(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__)[:300]
