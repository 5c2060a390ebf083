"""The write path: every accepted row is journalled on local disk, then written to the database.

The guarantee: **a row coby accepts is on local disk (fsynced) within ``flush_interval``, and leaves
the disk only after the database has committed it.** A kill -9 loses at most the rows of the last
``flush_interval``; a database outage, however long, loses nothing while the disk has room.

- Intake (``add``, on the event loop): a list append, nothing that can fail or block.
- The journal task, every ``flush_interval`` (sooner once ``batch_write_size`` rows of a table wait):
  the waiting rows of each table become one record of its journal (``journal.py``), appended and
  fsynced on the journal thread. Rows that cannot be journalled (disk full, I/O error) are counted in
  ``coby_storage_lost_rows_total{reason}`` and logged at a bounded rate; the live path never sees it.
- The writer task (``writer.py``): journalled rows to the database in journal order; state ``up`` /
  ``down``; only rows refused for their content are set aside.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from coby.config import Settings
from coby.db.journal import Chunk, Journal, append_records
from coby.db.tables import TABLES, Table
from coby.db.writer import LOG_EVERY, BatchSink, Lane, Writer, describe, journal_bytes, wait_event
from coby.metrics import BUFFER_DEPTH, LOST_ROWS

log = structlog.get_logger("coby.storage")

MAX_WAITING = 200_000     # rows per table waiting for a stalled journal before they are counted lost
JOURNAL_ERROR_HOLD = 5.0  # seconds without a failed append before the journal counts as well again: a full
#                          disk lets a small record through now and then, and must not look ready for it
STALL_SECONDS = 5.0       # an append (write + fsync) taking longer than this: the journal's disk is stalled


class WriteBuffer:
    def __init__(self, sink: BatchSink, settings: Settings) -> None:
        self._sink = sink
        self._batch = settings.batch_write_size
        self._hold = settings.data_buffer_size
        self._interval = settings.flush_interval
        # rows waiting for the journal while its disk does not answer (a hung fsync): beyond, counted lost
        self._max_waiting = max(10 * settings.data_buffer_size, MAX_WAITING)
        self._dir = Path(settings.data_dir)
        self._alert_bytes = settings.journal_alert_bytes
        self._lanes: dict[Table, Lane] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="coby-journal")
        self._journal_wake = asyncio.Event()
        self.writer = Writer(sink, self._lanes, self._thread, self._dir, settings.batch_write_size,
                             settings.flush_interval)
        self._journal_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._opened = False
        self._last_log: dict[tuple[str, str], float] = {}
        self.journal_error: str | None = None  # the last append's error, kept JOURNAL_ERROR_HOLD after it
        self._journal_failed_at = 0.0
        self._journal_ok_at = 0.0
        self.lost_rows = 0
        self._journal_busy_since: float | None = None

    # --- status --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The writer's: "starting", "up" or "down"."""
        return self.writer.state

    @property
    def error(self) -> str | None:
        return self.writer.error

    def _journal_trouble(self) -> str | None:
        """The journal's last error, until an append has succeeded after it and JOURNAL_ERROR_HOLD has
        passed without another failure."""
        if self.journal_error is not None and self._journal_ok_at > self._journal_failed_at \
                and time.monotonic() - self._journal_failed_at > JOURNAL_ERROR_HOLD:
            log.info("journal_recovered", error=self.journal_error)
            self.journal_error = None
        return self.journal_error

    def journal_bytes(self) -> int:
        return journal_bytes(self._lanes)

    def mark_down(self, error: str) -> None:
        """The database did not answer at start (said by the storage, which logs it)."""
        self.writer.mark_down(error)

    def ready(self) -> tuple[bool, str | None]:
        """Whether rows are being written now, and if not, why."""
        if self._journal_trouble() is not None:
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

    def _lane(self, table: Table) -> Lane | None:
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
            self._lanes[table] = Lane(journal, read=journal.committed)
        self._opened = True
        await self._import_spill()
        for lane in self._lanes.values():  # an earlier run's backlog (and its spill files) is the writer's to read
            lane.journalled = lane.journal.durable
        backlog = self.journal_bytes()
        if backlog:
            log.info("journal_backlog_found", bytes=backlog)

    def start(self) -> None:
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._journal_loop(), name="coby-storage-journal"),
                           loop.create_task(self.writer.run(), name="coby-storage-writer")]

    async def aclose(self, timeout: float = 10.0) -> None:
        """Journal everything accepted, give the writer ``timeout`` to store it, then stop. What is not
        stored stays in the journal for the next start. Idempotent."""
        if self._closed:
            return
        if self._opened:
            await self._journal_now()
            self._closed = True
            try:
                await asyncio.wait_for(self.writer.drained(), timeout)
            except asyncio.TimeoutError as e:
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
            try:
                await loop.run_in_executor(self._thread, lane.journal.close)
            except OSError as e:  # a full disk refusing the last fsync: what was written is read back
                log.warning("journal_close_failed", table=lane.journal.table.name, error=describe(e))
        self._thread.shutdown(wait=False)

    async def flush(self) -> None:
        """Journal what waits and wait until the database has it. StorageUnavailable if it is down."""
        await self._journal_now()
        await self.writer.drained(raise_when_down=True)

    # --- the journal -------------------------------------------------------------------------------
    async def _journal_loop(self) -> None:
        while True:
            await wait_event(self._journal_wake, self._interval)
            try:
                await self._journal_now()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - never dies (I/O errors are handled inside; this is a bug)
                log.exception("storage_journal_error")

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
                self.journal_error, self._journal_failed_at = error, time.monotonic()
                if start == end:  # nothing reached the file: the rows are gone
                    self._lose(table, len(rows), "journal_write_failed", error)
                    continue
            else:
                self._journal_ok_at = time.monotonic()
            lane.unwritten += len(rows)
            lane.journalled = end
            if lane.held_rows + len(rows) <= self._hold:
                lane.held.append(Chunk(start, end, rows))
                lane.held_rows += len(rows)
            BUFFER_DEPTH.labels(table.name).set(lane.held_rows)
        self.writer.wake_event.set()

    # --- an earlier version's spill files --------------------------------------------------------------
    async def _import_spill(self) -> None:
        """Move ``data_dir/spill/*.jsonl|*.draining`` (coby before the journal) into the journals."""
        from coby.db.spill import import_spill
        spill = self._dir / "spill"
        if spill.is_dir():
            await asyncio.get_running_loop().run_in_executor(
                self._thread, import_spill, spill, {t: lane.journal for t, lane in self._lanes.items()})
