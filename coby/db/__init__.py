"""Storage: one async interface (``Storage``), PostgreSQL/TimescaleDB and SQLite behind it."""

from __future__ import annotations

from coby.config import Settings
from coby.db.base import Storage
from coby.errors import ConfigError

__all__ = ["Storage", "open_storage"]


def open_storage(settings: Settings, url: str | None = None) -> Storage:
    """The backend for ``url`` (default: ``settings.storage_url``); call ``await storage.start()``."""
    url = url or settings.storage_url
    if url.startswith(("postgresql://", "postgres://")):
        from coby.db.postgres import PostgresStorage
        return PostgresStorage(settings, url)
    if url.startswith("sqlite:///"):
        from coby.db.sqlite import SqliteStorage
        return SqliteStorage(settings, url)
    raise ConfigError(f"invalid setting db_url={url!r}: must start with postgresql:// or sqlite:///")
