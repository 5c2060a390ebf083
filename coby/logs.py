"""Logging: structlog configured once, at start-up, by the CLI.

Console renderer on a TTY, one JSON object per line otherwise (production, CI, pipes).
Standard-library loggers (aiohttp, asyncio, psycopg) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


def configure(level: str = "INFO", json: bool | None = None, stream=None) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    lvl = logging.getLevelName(level.upper())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o, default=str).decode())
                if json else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer] if json else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO) if lvl < logging.INFO else lvl)
    for noisy in ("aiohttp.access", "psycopg.pool", "ccxt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
