"""Versioned SQL migrations: ``migrations/<backend>/NNNN_name.sql``, applied in order, once each.

Applied versions are recorded in ``schema_migrations``. Applying is idempotent:
running it again (at every start, or by ``coby migrate``) applies only what is new.
On PostgreSQL an advisory lock makes concurrent starters (several ``coby run``
processes sharing one database) apply each migration exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_dir(backend: str) -> Path:
    """The SQL files: packaged as ``coby/migrations`` in a wheel, ``migrations/`` in a checkout."""
    packaged = resources.files("coby") / "migrations" / backend
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "migrations" / backend


def load_migrations(backend: str) -> list[Migration]:
    out = []
    for path in sorted(migrations_dir(backend).glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise ValueError(f"migration file name {path.name!r} must look like 0001_name.sql")
        out.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {migrations_dir(backend)}")
    if not out:
        raise FileNotFoundError(f"no migrations found in {migrations_dir(backend)}")
    return out


CREATE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""
