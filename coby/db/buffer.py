"""The write path: every accepted row is journalled on local disk, then written to the database.

The guarantee: **a row coby accepts is on local disk (fsynced) within ``flush_interval``, and leaves
the disk only after the database has committed it.** A kill -9 loses at most the rows of the last
``flush_interval``; a database outage, however long, loses nothing while the disk has room.

- Intake (``add``, on the event loop): a list append, nothing that can fail or block.
- The journal task, every ``flush_interval`` (sooner once ``batch_write_size`` rows of a table wait):
  the waiting rows of each table become one record of its journal (``journal.py``), appended and
  fsynced on the journal thread. Rows that cannot be journalled (disk full, I/O error) are counted in
  ``coby_storage_lost_rows_total{reason}`` and logged at a bounded rate; the live path never sees it.
- The writer task: writes journalled records to the database in journal order, in batches of up to
  ``max(batch_write_size, 10,000)`` rows; records just journalled come from memory (at most
  ``data_buffer_size`` rows per table are held), a backlog is read back from disk in bounded chunks.
  After each commit the journal's cursor moves on and finished segments are deleted.
- Database unreachable or not yet migrated (``StorageUnavailable``, and any error that is not about
  a row's content): state ``down``; the writer probes again every ``PROBE_INTERVAL`` and writes the
  backlog once the database answers. A batch the database refuses for its content
  (``StorageRefused``) is split until the bad rows are isolated; only those go to
  ``data_dir/rejected/<table>.jsonl``.
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

from coby.config import Settings
from coby.db.journal import Chunk, Journal, Position, append_records
from coby.db.tables import TABLES, Table, row_to_json
from coby.errors import StorageRefused, StorageUnavailable
from coby.metrics import (
    BUFFER_DEPTH, FLUSH_FAILURES, JOURNAL_BYTES, JOURNAL_SKIPPED, LOST_ROWS, OVERFLOW, ROWS_DUPLICATE, ROWS_WRITTEN,
    STORAGE_UP, WRITE_LATENCY,
)

log = structlog.get_logger("coby.storage")

PROBE_INTERVAL = 0.5      # seconds between attempts while the database is down
MIN_WRITE_BATCH = 10_000  # rows per database batch when a backlog drains
MAX_WAITING = 200_000     # rows per table waiting for a stalled journal before they are counted lost
STALL_SECONDS = 5.0       # an append (write + fsync) taking longer than this: the journal's disk is stalled
LOG_EVERY = 10.0          # seconds: at most one log line per (table, reason) of lost rows


class BatchSink(Protocol):
    async def write_batch(self, table: Table, rows: list[tuple]) -> int:
        """Store rows idempotently; return how many were new. StorageRefused: a row's content."""

    async def prepare(self) -> None:
        """Connect and migrate if needed (called before writing after start or an outage)."""


@dataclass(slots=True)
class _Lane:
    """One table's rows on their way: waiting for the journal, then held in memory for the writer."""
    journal: Journal
    waiting: list[tuple] = field(default_factory=list)
    held: deque = field(default_factory=deque)  # Chunk of records journalled and kept in memory
    held_rows: int = 0
    unwritten: int = 0                           # rows journalled by this process, not yet written
    read: Position = Position(0, 0)              # next position the writer takes


class WriteBuffer:
    def __init__(self, sink: BatchSink, settings: Settings) -> None:
        self._sink = sink
        self._batch = settings.batch_write_size
        self._hold = settings.data_buffer_size
        self._interval = settings.flush_interval
        self._write_rows = max(settings.batch_write_size, MIN_WRITE_BATCH)
        # rows waiting for the journal while its disk does not answer (a hung fsync): beyond, counted lost
        self._max_waiting = max(10 * settings.data_buffer_size, MAX_WAITING)
        self._dir = Path(settings.data_dir)
        self._alert_bytes = settings.journal_alert_bytes
        self._lanes: dict[Table, _Lane] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="coby-journal")
        self._journal_wake = asyncio.Event()
        self._writer_wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._journal_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._opened = False
        self._last_log: dict[tuple[str, str], float] = {}
        #: "starting" (not yet written), "up", "down" (the database does not answer or refuses to migrate)
        self.state = "starting"
        self.error: str | None = None
        self.journal_error: str | None = None
        self.lost_rows = 0
        self._gauges_at = 0.0
        self._journal_busy_since: float | None = None

    # --- status --------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.state == "up" and self.journal_error is None

    def journal_bytes(self) -> int:
        return sum(lane.journal.backlog_bytes() for lane in self._lanes.values())

    def ready(self) -> tuple[bool, str | None]:
        """Whether rows are being written now, and if not, why."""
        if self.journal_error is not None:
            return False, f"journal: {self.journal_error}"
        if self.state != "up":
            return False, f"database {self.state}" + (f": {self.error}" if self.error else "")
        backlog = self.journal_bytes()
        if backlog > self._alert_bytes:
            return False, f"journal backlog {backlog} bytes > journal_alert_bytes {self._alert_bytes}"
        return True, None

    def pending(self) -> int:
        """Rows accepted by this process and not yet committed by the database (an earlier run's journal
        backlog is counted in ``journal_bytes`` only)."""
        return sum(len(lane.waiting) + lane.unwritten for lane in self._lanes.values())

    # --- intake (event loop; never blocks, never raises) ------------------------------------------
    def add(self, table: Table, row: tuple) -> bool:
        return self.add_many(table, [row])

    def add_many(self, table: Table, rows: list[tuple]) -> bool:
        lane = self._lanes.get(table) or self._lane(table)
        if lane is None:
            return False
        complete = True
        if len(lane.waiting) + len(rows) > self._max_waiting and self._journal_stalled():
            room = max(0, self._max_waiting - len(lane.waiting))
            self._lose(table, len(rows) - room, "journal_stalled")
            rows, complete = rows[:room], False
        lane.waiting.extend(rows)
        if len(lane.waiting) >= self._batch:
            self._journal_wake.set()
        return complete

    def _journal_stalled(self) -> bool:
        """The journal has been busy with one append for over STALL_SECONDS (a hung disk, not a burst)."""
        return self._journal_busy_since is not None and time.monotonic() - self._journal_busy_since > STALL_SECONDS

    def _lane(self, table: Table) -> _Lane | None:
        if self._closed or not self._opened:
            self._lose(table, 1, "closed" if self._closed else "not_started")
            return None
        return self._lanes[table]

    def _lose(self, table: Table, n: int, reason: str, error: str | None = None) -> None:
        self.lost_rows += n
        LOST_ROWS.labels(table.name, reason).inc(n)
        now = time.monotonic()
        if now - self._last_log.get((table.name, reason), -LOG_EVERY) >= LOG_EVERY:
            self._last_log[(table.name, reason)] = now
            log.error("storage_rows_lost", table=table.name, reason=reason, rows=n, error=error,
                      lost_total=self.lost_rows)

    # --- lifecycle ----------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open every table's journal (a new active segment after what an earlier run left)."""
        root = self._dir / "journal"
        loop = asyncio.get_running_loop()
        for table in TABLES.values():
            journal = Journal(root, table)
            await loop.run_in_executor(self._thread, journal.open)
            self._lanes[table] = _Lane(journal, read=journal.committed)
        self._opened = True
        await self._import_spill()
        backlog = self.journal_bytes()
        if backlog:
            log.info("journal_backlog_found", bytes=backlog)

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._journal_loop(), name="coby-storage-journal"),
                           loop.create_task(self._writer_loop(), name="coby-storage-writer")]

    async def aclose(self, timeout: float = 10.0) -> None:
        """Journal everything accepted, give the writer ``timeout`` to store it, then stop. What is not
        stored stays in the journal for the next start. Idempotent."""
        if self._closed:
            return
        if self._opened:
            await self._journal_now()
            self._closed = True
            try:
                await asyncio.wait_for(self._drained(), timeout)
            except (asyncio.TimeoutError, StorageUnavailable) as e:
                log.warning("storage_close_journal_kept", reason=str(e) or "timeout", bytes=self.journal_bytes())
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        loop = asyncio.get_running_loop()
        for lane in self._lanes.values():
            await loop.run_in_executor(self._thread, lane.journal.close)
        self._thread.shutdown(wait=False)

    async def flush(self) -> None:
        """Journal what waits and wait until the database has it. StorageUnavailable if it is down."""
        await self._journal_now()
        await self._drained(raise_when_down=True)

    async def _drained(self, raise_when_down: bool = False) -> None:
        async with self._progress:
            while True:
                if all(lane.read >= lane.journal.durable and not lane.held for lane in self._lanes.values()):
                    return
                if raise_when_down and self.state == "down":
                    raise StorageUnavailable(self.error or "database down")
                self._writer_wake.set()
                await self._progress.wait()

    # --- the journal -------------------------------------------------------------------------------
    async def _journal_loop(self) -> None:
        while True:
            await _wait(self._journal_wake, self._interval)
            await self._journal_now()

    async def _journal_now(self) -> None:
        """Journal what waits now. Serialised: a flush that finds an append in flight waits for it, so
        that it never reports drained before rows accepted earlier are on disk."""
        async with self._journal_lock:
            await self._journal_waiting()

    async def _journal_waiting(self) -> None:
        work = [(lane, lane.waiting) for lane in self._lanes.values() if lane.waiting]
        if not work:
            return
        for lane, _ in work:
            lane.waiting = []
        self._journal_busy_since = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._thread, append_records, [(lane.journal, rows) for lane, rows in work])
        finally:
            self._journal_busy_since = None
        for (lane, rows), (start, end, error) in zip(work, results):
            table = lane.journal.table
            if error is not None:
                self.journal_error = error
                if start == end:  # nothing reached the file: the rows are gone
                    self._lose(table, len(rows), "journal_write_failed", error)
                    continue
            elif self.journal_error is not None:
                log.info("journal_recovered", table=table.name)
                self.journal_error = None
            lane.unwritten += len(rows)
            if lane.held_rows + len(rows) <= self._hold:
                lane.held.append(Chunk(start, end, rows))
                lane.held_rows += len(rows)
            BUFFER_DEPTH.labels(table.name).set(lane.held_rows)
        self._writer_wake.set()

    # --- the writer ---------------------------------------------------------------------------------
    async def _writer_loop(self) -> None:
        while True:
            if self.state != "up":
                if not await self._prepare():
                    await self._wait_writer(PROBE_INTERVAL)
                    continue
            wrote = False
            for lane in list(self._lanes.values()):
                try:
                    wrote |= await self._write_next(lane)
                except StorageUnavailable as e:
                    self._down(str(e))
                    break
            async with self._progress:
                self._progress.notify_all()
            if time.monotonic() - self._gauges_at >= 1.0:
                self._gauges_at = time.monotonic()
                self.update_gauges()
            if not wrote and self.state == "up":
                await self._wait_writer(max(self._interval, 0.05))
            elif self.state != "up":
                await self._wait_writer(PROBE_INTERVAL)

    async def _wait_writer(self, timeout: float) -> None:
        await _wait(self._writer_wake, timeout)

    async def _prepare(self) -> bool:
        try:
            await self._sink.prepare()
        except Exception as e:  # noqa: BLE001 - down until it answers; said once per state change
            self._down(_describe(e))
            async with self._progress:
                self._progress.notify_all()
            return False
        if self.state != "up":
            log.info("storage_up", previous=self.state, backlog_bytes=self.journal_bytes())
        self.state, self.error = "up", None
        STORAGE_UP.set(1)
        return True

    def mark_down(self, error: str) -> None:
        """The database did not answer at start (said by the storage, which logs it)."""
        self.state, self.error = "down", error
        STORAGE_UP.set(0)

    def _down(self, error: str) -> None:
        if self.state != "down":
            log.warning("storage_down", error=error, backlog_bytes=self.journal_bytes())
        self.state, self.error = "down", error
        STORAGE_UP.set(0)

    async def _write_next(self, lane: _Lane) -> bool:
        """Write the next batch of one table (from memory, or from disk when behind). True if it wrote."""
        journal = lane.journal
        while lane.held and lane.held[0].start < lane.read:  # already written (read back from disk)
            lane.held_rows -= len(lane.held.popleft().rows)
        if lane.read >= journal.durable and not lane.held:
            return False
        if lane.held and lane.held[0].start == lane.read:
            chunks = [lane.held.popleft()]
            n = len(chunks[0].rows)
            while lane.held and n + len(lane.held[0].rows) <= self._write_rows:
                chunks.append(lane.held.popleft())
                n += len(chunks[-1].rows)
            lane.held_rows -= n
            rows = chunks[0].rows if len(chunks) == 1 else [r for c in chunks for r in c.rows]
            end = chunks[-1].end
        else:
            stop = lane.held[0].start if lane.held else journal.durable
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
            raise StorageUnavailable(_describe(e)) from e
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

    # --- an earlier version's spill files --------------------------------------------------------------
    async def _import_spill(self) -> None:
        """Move ``data_dir/spill/*.jsonl|*.draining`` (coby before the journal) into the journals."""
        from coby.db.spill import import_spill
        spill = self._dir / "spill"
        if spill.is_dir():
            await asyncio.get_running_loop().run_in_executor(
                self._thread, import_spill, spill, {t: lane.journal for t, lane in self._lanes.items()})


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` (then clear it) or ``timeout``. asyncio.timeout, not wait_for: Python 3.11's
    wait_for swallows a cancellation that arrives as the event is set, and the task would not stop."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
    event.clear()


def _describe(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__)[:300]
