"""Exports, imports and SQLite backups: the stored data as files, and back.

Export (``coby export``): each table's rows of [start, end) are read in key order, ``EXPORT_CHUNK``
rows at a time (keyset pagination, ``Storage.iter_rows``), and written by polars as one file per
chunk and UTC day::

    OUT/manifest.json
    OUT/trade_events/date=2026-09-21/part-00000.parquet   (or .csv)

Hive-style ``date=`` folders, so ``pl.scan_parquet("OUT/trade_events/**/*.parquet")``,
``pd.read_parquet("OUT/trade_events")`` and DuckDB's ``read_parquet('OUT/trade_events/*/*.parquet')``
read a table whole. Columns are the table's, in its order, with its types: timestamps as UTC
microseconds, numbers as float64/int64, book sides as the JSON text coby stores (``[[price, size],
...]``). Memory holds at most two chunks, whatever the range.

Import (``coby import DIR``): every file of an export, one at a time, written straight to the
database in batches through the backends' idempotent writes (events: the stored row wins; OHLCV and
heatmaps: upsert), so importing twice changes nothing. It is the restore path and the way to move
data between SQLite and PostgreSQL.

Backup (``coby backup``, SQLite): SQLite's online backup API copies the database as one consistent
snapshot while the daemon keeps writing (WAL: the writer is not blocked).
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

import polars as pl

from coby.db.tables import FLOAT, INT, JSON, TABLES, TEXT, TS, Table

EXPORT_CHUNK = 100_000   # rows per read and per file at most
IMPORT_BATCH = 20_000    # rows per database write on import
FORMATS = ("parquet", "csv")
#: short names accepted by --tables
TABLE_ALIASES = {"trades": "trade_events", "books": "order_book_snapshots", "ohlcv": "ohlcv_data",
                 "heatmap": "heatmap_data", "events": "connection_events"}
_DTYPES = {TEXT: pl.Utf8, TS: pl.Datetime("us", "UTC"), FLOAT: pl.Float64, INT: pl.Int64, JSON: pl.Utf8}


def table_names(spec: str | None) -> list[Table]:
    """``trades,books`` (or full table names) -> tables; None or empty: all of them."""
    if not spec:
        return list(TABLES.values())
    out = []
    for name in (n.strip() for n in spec.split(",") if n.strip()):
        full = TABLE_ALIASES.get(name, name)
        if full not in TABLES:
            raise ValueError(f"unknown table {name!r}; use {', '.join(TABLE_ALIASES)} (or the table names)")
        out.append(TABLES[full])
    return out


def schema(table: Table) -> dict[str, Any]:
    return {c.name: _DTYPES[c.kind] for c in table.columns}


class Progress:
    """A progress bar on a terminal (nothing otherwise): how far into the range (or the files), what is
    being written, rows so far."""

    def __init__(self, stream: IO[str] | None, hz: float = 5.0, width: int = 30) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.every = 1.0 / hz
        self.width = width
        self.last = 0.0

    def update(self, what: str, rows: int, done: float, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is not None and (force or now - self.last >= self.every):
            self.last = now
            filled = int(max(0.0, min(done, 1.0)) * self.width)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done * 100:5.1f}%  {what}: "
                              f"{rows:,} rows\x1b[K")
            self.stream.flush()

    def done(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


# --- export -------------------------------------------------------------------------------------
async def export(storage: Any, out: Path, start: datetime, end: datetime, *, tables: Sequence[Table],
                 exchanges: Sequence[str] | None = None, symbols: Sequence[str] | None = None,
                 fmt: str = "parquet", chunk: int = EXPORT_CHUNK, progress: IO[str] | None = None) -> dict:
    """Write ``tables``' rows of [start, end) under ``out``; return the manifest (also written)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(progress)
    manifest: dict[str, Any] = {"coby_export": 1, "format": fmt, "start": start.isoformat(), "end": end.isoformat(),
                                "exchanges": list(exchanges or []), "symbols": list(symbols or []), "tables": {}}
    for table in tables:
        has_exchange = "exchange" in table.names
        ts, span = table.names.index("timestamp"), (end - start) or timedelta(microseconds=1)
        rows_total, files = 0, 0
        parts: dict[str, int] = {}
        async for rows in storage.iter_rows(table, start, end, exchanges=exchanges if has_exchange else None,
                                            symbols=symbols, chunk=chunk):
            for day, frame in _by_day(table, rows):
                n = parts.get(day, 0)
                parts[day] = n + 1
                folder = out / table.name / f"date={day}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"part-{n:05d}.{fmt}"
                if fmt == "parquet":
                    frame.write_parquet(path, compression="zstd", statistics=True)
                else:
                    frame.write_csv(path)
                files += 1
                rows_total += frame.height
                bar.update(f"{table.name} {day}", rows_total, (rows[-1][ts] - start) / span)
        manifest["tables"][table.name] = {"rows": rows_total, "files": files,
                                          "columns": {c.name: c.kind for c in table.columns}}
        bar.update(f"{table.name} done", rows_total, 1.0, force=True)
    bar.done()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def _frame(table: Table, rows: list[tuple]) -> pl.DataFrame:
    """Rows as a frame, column by column; timestamps through integer microseconds (three times faster
    than polars converting aware datetimes, the bulk of an export's time)."""
    series = []
    for c, values in zip(table.columns, zip(*rows)):
        if c.kind == TS:
            us = [None if v is None else (v - _EPOCH) // _US for v in values]
            series.append(pl.Series(c.name, us, dtype=pl.Int64).cast(_DTYPES[TS]))
        else:
            series.append(pl.Series(c.name, values, dtype=_DTYPES[c.kind]))
    return pl.DataFrame(series)


def _by_day(table: Table, rows: list[tuple]) -> Iterable[tuple[str, pl.DataFrame]]:
    """A chunk (in key order: timestamp first) as one frame per UTC day."""
    frame = _frame(table, rows)
    days = frame.get_column("timestamp").dt.date()
    first, last = days[0], days[-1]
    if first == last:
        yield first.isoformat(), frame
        return
    for (day,), part in frame.with_columns(days.alias("_day")).partition_by("_day", as_dict=True,
                                                                               maintain_order=True).items():
        yield day.isoformat(), part.drop("_day")


# --- import -------------------------------------------------------------------------------------
def export_files(root: Path) -> list[tuple[Table, Path]]:
    """Every file of an export under ``root``, table by table, day by day, part by part."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    found = []
    for table in TABLES.values():
        folder = root / table.name
        if folder.is_dir():
            found += [(table, p) for p in sorted(folder.glob("date=*/part-*.*")) if p.suffix[1:] in FORMATS]
    return found


def read_part(table: Table, path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path, columns=list(table.names))
    else:
        frame = pl.read_csv(path, schema=schema(table))
    return frame.select(list(table.names)).cast(schema(table))  # type: ignore[arg-type]


async def import_export(storage: Any, root: Path, *, batch: int = IMPORT_BATCH,
                        progress: IO[str] | None = None) -> dict[str, dict[str, int]]:
    """Load an export into ``storage`` (connected and migrated); per table: rows read, rows new."""
    bar = Progress(progress)
    counts: dict[str, dict[str, int]] = {}
    files = export_files(root)
    for i, (table, path) in enumerate(files):
        frame = read_part(table, path)
        c = counts.setdefault(table.name, {"rows": 0, "new": 0})
        for offset in range(0, frame.height, batch):
            rows = list(frame.slice(offset, batch).iter_rows())
            c["new"] += await storage.write_batch(table, rows)
            c["rows"] += len(rows)
            bar.update(f"{table.name} {path.parent.name}", c["rows"], (i + offset / frame.height) / len(files))
    bar.done()
    return counts


# --- backup (SQLite) ----------------------------------------------------------------------------
def backup_sqlite(source: Path, target: Path, pages: int = -1) -> int:
    """Copy the SQLite database at ``source`` to ``target`` with SQLite's online backup API; return its
    size in bytes. ``pages=-1``: one step, one consistent snapshot (in WAL mode the daemon's writer goes on;
    a stepwise copy would start again each time the daemon commits)."""
    if not source.is_file():
        raise FileNotFoundError(f"no SQLite database at {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=pages)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            ok = dst.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"backup failed its check: {ok}")
        finally:
            dst.close()
    finally:
        src.close()
    tmp.replace(target)
    return target.stat().st_size

