"""Shared fixtures: a fresh PostgreSQL database per test session, Redis db 15, both backends."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import structlog

from coby.config import Settings
from coby.daemon import Daemon
from coby.db import open_storage

# structlog writes to stderr, as coby.logs has it in production: structlog's default (stdout) mixes the log
# lines of an in-process daemon (e.g. one http_request line per request) into the output of the CLI
# commands tests run with CliRunner. Not cached, so that structlog.testing.capture_logs works.
structlog.configure(processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                                structlog.processors.TimeStamper(fmt="iso", utc=True),
                                structlog.dev.ConsoleRenderer(colors=False)],
                    logger_factory=structlog.PrintLoggerFactory(sys.stderr), cache_logger_on_first_use=False)

PG_ADMIN = os.environ.get("COBY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("COBY_TEST_REDIS", "redis://127.0.0.1:6379/15")
TABLES = ("order_book_snapshots", "trade_events", "heatmap_data", "ohlcv_data", "connection_events")


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A database of its own for this test session, dropped at the end."""
    name = f"coby_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(PG_ADMIN, name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(tmp_path: Path, **kw) -> Settings:
    base = dict(data_dir=str(tmp_path / "data"), flush_interval=0.05, log_level="WARNING")
    base.update(kw)
    return Settings.load(env={}, **base)


def free_port() -> int:
    """A TCP port nobody listens on now (for a daemon's API, which must keep its port across restarts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningDaemon:
    """A daemon under test, restartable on the same API port (a restart test stops and starts it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.daemon: Daemon | None = None
        self.first_start: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    async def start(self) -> None:
        self.daemon = Daemon(self.settings)
        await self.daemon.start()
        self.first_start = self.first_start or time.time()

    async def stop(self) -> None:
        if self.daemon is not None:
            daemon, self.daemon = self.daemon, None
            await daemon.stop()


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, pg_url: str, tmp_path: Path) -> str:
    if backend == "postgresql":
        with psycopg.connect(pg_url, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]
            if exists:
                conn.execute(f"TRUNCATE {', '.join(TABLES)}")
        return pg_url
    return f"sqlite:///{tmp_path / 'coby.sqlite3'}"


@pytest.fixture
async def storage(db_url: str, tmp_path: Path):
    st = open_storage(make_settings(tmp_path, db_url=db_url), db_url)
    await st.start()
    await st.flush()  # the writer is up before the test starts (its first log line is not in the test's output)
    yield st
    await st.aclose()


@pytest.fixture
async def pg(tmp_path: Path, pg_url: str):
    """Real PostgreSQL storage, for tests whose subject is not storage (the storage contract runs on both)."""
    st = open_storage(make_settings(tmp_path, db_url=pg_url), pg_url)
    await st.start()
    await st.flush()
    yield st
    await st.aclose()


@pytest.fixture(params=["redis", "memory"])
async def cache(request):
    """Both caches (Redis on db 15, flushed; the in-process one)."""
    from tests.api_fixtures import open_test_cache
    c = await open_test_cache(request.param)
    yield c
    await c.aclose()
