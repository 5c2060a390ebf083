"""Spill files of coby before the journal (``data_dir/spill/<table>.jsonl`` and ``.draining``): moved
into the journals at start, streamed in bounded records, unreadable lines skipped and counted."""

from __future__ import annotations

from pathlib import Path

import structlog

from coby.db.journal import Journal
from coby.db.tables import Table, row_from_json

log = structlog.get_logger("coby.storage")
RECORD_ROWS = 10_000


def import_spill(spill_dir: Path, journals: dict[Table, Journal]) -> int:
    """Append every readable spilled row to its table's journal (fsynced), then delete the file."""
    total = 0
    for path in sorted(list(spill_dir.glob("*.draining")) + list(spill_dir.glob("*.jsonl"))):
        rows: dict[Table, list[tuple]] = {}
        bad = bad_bytes = n = 0

        with path.open("rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    table, row = row_from_json(line)
                except (ValueError, KeyError, TypeError, IndexError):
                    bad += 1
                    bad_bytes += len(line)
                    continue
                batch = rows.setdefault(table, [])
                batch.append(row)
                n += 1
                if len(batch) >= RECORD_ROWS:
                    journals[table].append(batch)
                    rows[table] = []
        for table, batch in rows.items():
            if batch:
                journals[table].append(batch)
        for j in journals.values():
            j.sync()
        path.unlink()
        total += n
        log.info("spill_imported", path=str(path), rows=n)
        if bad:
            log.error("spill_lines_skipped", path=str(path), lines=bad, bytes=bad_bytes)
    return total
