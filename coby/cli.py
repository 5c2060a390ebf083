"""The command line (typer), thin: parse, build settings, call one coroutine.

An invalid setting prints one line naming it and exits with code 2.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from coby import __version__
from coby.config import Settings
from coby.errors import ConfigError, StorageError
from coby.gcpolicy import freeze_imports, tune_gc

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="coby: live order books and trades from ten exchanges, aggregated, stored, served, replayed.")

ConfigOpt = typer.Option(None, "--config", help="TOML settings file (see README: Configuration).")
DbOpt = typer.Option(None, "--db", help="Database URL: postgresql://... or sqlite:///path.")
DataDirOpt = typer.Option(None, "--data-dir", help="Directory for the SQLite file, caches and spill files.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"coby: error: {message}", err=True)
    raise typer.Exit(code)


def _settings(config: Optional[Path], **overrides: Any) -> Settings:
    try:
        return Settings.load(config, **overrides)
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable


def _logging(settings: Settings) -> None:
    from coby.logs import configure
    configure(settings.log_level)


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    db: Optional[str] = DbOpt,
    redis: Optional[str] = typer.Option(None, "--redis", help="Redis URL (default: in-process cache)."),
    host: Optional[str] = typer.Option(None, "--host", help="API bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="API port (default 8080)."),
    exchanges: Optional[str] = typer.Option(None, "--exchanges", help="Comma-separated venues, e.g. binance,okx."),
    symbols: Optional[str] = typer.Option(None, "--symbols", help="Comma-separated symbols, e.g. BTC-USDT,ETH-USDT."),
    data_dir: Optional[str] = DataDirOpt,
    simulate: Optional[bool] = typer.Option(None, "--simulate/--no-simulate",
                                            help="Run the exchange simulator in-process and connect every venue to it."),
    simulator_port: Optional[int] = typer.Option(None, "--simulator-port",
                                                 help="Port of the in-process simulator (default 8765)."),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
    role: Optional[str] = typer.Option(None, "--role", help="all (default), collector or api (docs/scaling.md)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="A collector's share of the symbols: K/N."),
    standby: Optional[bool] = typer.Option(None, "--standby/--no-standby",
                                           help="A collector that takes over symbols whose owner died."),
    collector_id: Optional[str] = typer.Option(None, "--collector-id", help="This collector's name (default host:pid)."),
) -> None:
    """Run the daemon: connectors, aggregation, storage, cache and the API, until SIGINT/SIGTERM."""
    settings = _settings(config, db_url=db, redis_url=redis, api_host=host, api_port=port, exchanges=exchanges,
                         symbols=symbols, data_dir=data_dir, simulate=simulate, simulator_port=simulator_port,
                         log_level=log_level, role=role, shard=shard, standby=standby, collector_id=collector_id)
    _check_bind(settings)
    ports = [(settings.api_host, settings.api_port, "api_port: --port or API_PORT")]
    if settings.simulate:
        ports.append(("127.0.0.1", settings.simulator_port, "simulator_port: --simulator-port or COBY_SIMULATOR_PORT"))
    _check_ports(ports)
    _logging(settings)
    tune_gc()
    from coby.daemon import run as run_daemon
    from coby import eventloop
    freeze_imports()
    try:  # a loop that cannot be had (uvloop asked for, not installed) is a ConfigError before anything starts
        code = eventloop.run(run_daemon(settings), settings.event_loop)
    except ConfigError as e:
        _fail(str(e), 2)
    except StorageError as e:
        _fail(str(e), 1)
    except OSError as e:  # a port taken between the check and the bind
        if e.errno != errno.EADDRINUSE:
            raise
        _fail(f"address already in use ({e.strerror}): change --port / --simulator-port")
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (as the server will bind it: SO_REUSEADDR, like asyncio)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the server reports an unknown host itself
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return True
    return False


def _check_ports(ports: list[tuple[str, int, str]]) -> None:
    """One line and exit 2 when a port the command will listen on is taken (or asked for twice)."""
    seen: dict[int, str] = {}
    for host, port, how in ports:
        name = how.split(":")[0]
        if port and port in seen:
            _fail(f"port {port} is set for both {seen[port]} and {name}: change {how.split(': ')[1]}")
        seen[port] = name
        if port and _port_in_use(host, port):
            _fail(f"port {port} ({name}) is already in use on {host}: choose another with {how.split(': ')[1]}")


def _check_bind(settings: Settings) -> None:
    loopback = settings.api_host in {"127.0.0.1", "::1", "localhost"}
    if not loopback and not settings.api_token:
        _fail(f"invalid setting api_host={settings.api_host}: binding a non-loopback address requires "
              "COBY_API_TOKEN to be set")


@app.command()
def migrate(config: Optional[Path] = ConfigOpt, db: Optional[str] = DbOpt,
            data_dir: Optional[str] = DataDirOpt) -> None:
    """Create or upgrade the database schema (idempotent) and report the storage mode."""
    settings = _settings(config, db_url=db, data_dir=data_dir)
    _logging(settings)
    from coby.db import open_storage

    async def go() -> str:
        storage = open_storage(settings)
        await storage.connect()
        try:
            await storage.setup_database_schema()
            return storage.mode
        finally:
            await storage.disconnect()

    try:
        mode = asyncio.run(go())
    except StorageError as e:
        _fail(str(e), 1)
    typer.echo(f"schema up to date ({mode})")


@app.command()
def simulate(port: int = typer.Option(8765, "--port", help="Port to listen on."),
             host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
             exchanges: Optional[str] = typer.Option(None, "--exchanges", help="Comma-separated venues."),
             symbols: Optional[str] = typer.Option(None, "--symbols", help="Comma-separated symbols."),
             rate: float = typer.Option(10.0, "--rate", help="Book updates per second per market.")) -> None:
    """Run the exchange simulator alone (the ten venues' public protocols on one local port)."""
    settings = _settings(None, exchanges=exchanges, symbols=symbols, simulator_port=port)
    _check_ports([(host, port, "port: --port")])
    _logging(settings)
    tune_gc()
    from coby.simulator.server import serve
    try:
        asyncio.run(serve(port=port, host=host, exchanges=settings.exchanges, symbols=settings.symbols, rate=rate))
    except KeyboardInterrupt:
        pass


@app.command()
def status(url: str = typer.Option("http://127.0.0.1:8080", "--url", help="The running daemon's API."),
           token: Optional[str] = typer.Option(None, "--token", envvar="COBY_API_TOKEN",
                                               help="Bearer token (default: COBY_API_TOKEN).")) -> None:
    """Print the status table of a running daemon (GET /api/v1/status)."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/api/v1/status",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            detail = e.reason
        _fail(f"{url} answered HTTP {e.code}: {detail}", 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        _fail(f"cannot reach {url}: {getattr(e, 'reason', e)}", 1)
    from coby.cluster_table import cluster_table
    typer.echo("\n".join(filter(None, (_status_table(body), cluster_table(body.get("cluster"))))))


def _status_table(body: dict) -> str:
    def num(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [("exchange", "state", "age_s", "msg/s", "messages", "reconnects", "circuit", "rejects")]
    for name, v in sorted(body.get("exchanges", {}).items()):
        rejects = ",".join(f"{k}={n}" for k, n in sorted(v.get("rejects", {}).items())) or "-"
        rows.append((name, v["state"], num(v.get("age_s"), ".1f"), num(v.get("messages_per_s"), ".1f"),
                     str(v["messages"]), str(v["reconnects"]), v["circuit"], rejects))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    st, cache = body.get("storage", {}), body.get("cache", {})
    lines.append("")
    lines.append(f"storage {st.get('kind')} ({st.get('mode')}), {'healthy' if st.get('healthy') else 'UNHEALTHY'}"
                 f"{'' if st.get('healthy') else ' (' + str(st.get('error')) + ')'}, {st.get('pending_rows')} rows "
                 f"pending, journal {st.get('journal_bytes', 0)} bytes; cache {cache.get('kind')} "
                 f"{'connected' if cache.get('connected') else 'DISCONNECTED'}; uptime {body.get('uptime_s')} s; "
                 f"{body.get('api', {}).get('ws_clients', 0)} WebSocket clients")
    load = body.get("load")
    if load:
        rates = ", ".join(f"{n} {num(v.get('delivered_per_s'), '.0f')}/{num(v.get('expected_per_s'), '.0f')} msg/s "
                          f"{num(v.get('delay_s'), '.1f')} s behind" for n, v in sorted(load.get("venues", {}).items()))
        lines.append(f"load {load['state'].upper() if load['overloaded'] else load['state']}"
                     f"{' (' + '; '.join(load['reasons']) + ')' if load.get('reasons') else ''}, degradation level "
                     f"{load['degradation_level']}; event loop lag {num(load.get('loop_lag_s'), '.3f')} s "
                     f"(p99 {num(load.get('loop_lag_p99_s'), '.3f')} s); CPU {num(load.get('cpu'), '.2f')}; "
                     f"RSS {load.get('rss_bytes', 0) / 2 ** 20:.0f} MB; write backlog "
                     f"{load.get('write_backlog_rows', 0)} rows")
        if rates:
            lines.append(f"delivered/expected: {rates}")
    return "\n".join(lines)


@app.command()
def replay(
    start: str = typer.Option(..., "--start", help="Start of the range: ISO 8601 (naive = UTC) or epoch ms."),
    end: str = typer.Option(..., "--end", help="End of the range (exclusive): ISO 8601 or epoch ms."),
    speed: float = typer.Option(0.0, "--speed", help="1 real time, 10 ten times faster, 0.5 half speed; "
                                                     "0 (default) as fast as stdout is read."),
    exchanges: Optional[str] = typer.Option(None, "--exchanges", help="Comma-separated venues (default: all)."),
    symbols: Optional[str] = typer.Option(None, "--symbols", help="Comma-separated symbols (default: all)."),
    channels: Optional[str] = typer.Option(None, "--channels", help="Comma-separated channel kinds or names, "
                                                                    "e.g. trades,book (default: all)."),
    db: Optional[str] = DbOpt,
    config: Optional[Path] = ConfigOpt,
    data_dir: Optional[str] = DataDirOpt,
    log_level: Optional[str] = typer.Option(None, "--log-level", help="Default WARNING (stderr is the progress "
                                                                      "bar's)."),
) -> None:
    """Replay a stored range: one JSON envelope a line on stdout (live's channels, marked "replay"),
    a progress bar on stderr when it is a terminal."""
    settings = _settings(config, db_url=db, data_dir=data_dir, exchanges=exchanges, symbols=symbols,
                         log_level=log_level)
    from coby.logs import configure
    configure(log_level or ("WARNING" if settings.log_level == "INFO" else settings.log_level))
    tune_gc()
    from coby.errors import ReplayError
    from coby.replay_cli import print_replay
    try:
        code = asyncio.run(print_replay(settings, start, end, speed,
                                        exchanges=settings.exchanges if exchanges else None,
                                        symbols=settings.symbols if symbols else None,
                                        channels=channels.split(",") if channels else None))
    except ReplayError as e:
        _fail(str(e))
    except StorageError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def _open_db(settings: Settings) -> Any:
    from coby.db import open_storage
    return open_storage(settings)


@app.command("export")
def export_(
    start: str = typer.Option(..., "--start", help="Start of the range: ISO 8601 (naive = UTC) or epoch ms."),
    end: str = typer.Option(..., "--end", help="End of the range (exclusive): ISO 8601 or epoch ms."),
    out: Path = typer.Option(..., "--out", help="Directory to write (TABLE/date=YYYY-MM-DD/part-N.FORMAT)."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    tables: Optional[str] = typer.Option(None, "--tables", help="Comma-separated: trades, books, ohlcv, heatmap, "
                                                                "events (default: all)."),
    exchanges: Optional[str] = typer.Option(None, "--exchanges", help="Comma-separated venues (default: all)."),
    symbols: Optional[str] = typer.Option(None, "--symbols", help="Comma-separated symbols (default: all)."),
    db: Optional[str] = DbOpt, config: Optional[Path] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Export stored data as files a researcher opens in polars, pandas or DuckDB (parquet or CSV, per table
    and UTC day), in bounded memory; a progress line on a terminal. See docs/operations.md."""
    settings = _settings(config, db_url=db, data_dir=data_dir, exchanges=exchanges, symbols=symbols)
    _logging(settings)
    from coby.archive import export, table_names
    from coby.errors import ReplayError
    from coby.replay import parse_time
    try:
        chosen, t0, t1 = table_names(tables), parse_time(start, "start"), parse_time(end, "end")
    except (ValueError, ReplayError) as e:
        _fail(str(e))
    if fmt not in ("parquet", "csv"):
        _fail(f"--format must be parquet or csv, not {fmt!r}")

    async def go() -> dict:
        storage = _open_db(settings)
        await storage.connect()
        try:
            await storage.setup_database_schema()
            return await export(storage, out, t0, t1, tables=chosen, fmt=fmt, progress=sys.stderr,
                                exchanges=settings.exchanges if exchanges else None,
                                symbols=settings.symbols if symbols else None)
        finally:
            await storage.disconnect()

    try:
        manifest = asyncio.run(go())
    except StorageError as e:
        _fail(str(e), 1)
    for name, t in manifest["tables"].items():
        typer.echo(f"{name}: {t['rows']} rows in {t['files']} files")


@app.command("import")
def import_(
    directory: Path = typer.Argument(..., help="A directory written by coby export."),
    db: Optional[str] = DbOpt, config: Optional[Path] = ConfigOpt, data_dir: Optional[str] = DataDirOpt,
) -> None:
    """Load an export into the database (deduplicated: importing twice changes nothing). The restore path,
    and the way to move data between SQLite and PostgreSQL."""
    settings = _settings(config, db_url=db, data_dir=data_dir)
    from coby.archive import export_files, import_export
    try:
        if not export_files(directory):
            _fail(f"{directory} holds no exported files (TABLE/date=YYYY-MM-DD/part-N.parquet|csv)")
    except FileNotFoundError as e:
        _fail(str(e))
    _logging(settings)

    async def go() -> dict:
        storage = _open_db(settings)
        await storage.connect()
        try:
            await storage.setup_database_schema()
            return await import_export(storage, directory, progress=sys.stderr)
        finally:
            await storage.disconnect()

    try:
        counts = asyncio.run(go())
    except FileNotFoundError as e:
        _fail(str(e))
    except StorageError as e:
        _fail(str(e), 1)
    for name, c in counts.items():
        typer.echo(f"{name}: {c['rows']} rows read, {c['new']} new")


@app.command()
def backup(out: Path = typer.Option(..., "--out", help="The backup file to write (replaced if it exists)."),
           db: Optional[str] = DbOpt, config: Optional[Path] = ConfigOpt,
           data_dir: Optional[str] = DataDirOpt) -> None:
    """Back up the SQLite database with SQLite's online backup API, while the daemon runs: one consistent
    copy. (PostgreSQL: pg_dump, see docs/operations.md.)"""
    settings = _settings(config, db_url=db, data_dir=data_dir)
    if not settings.storage_url.startswith("sqlite:///"):
        _fail("coby backup copies an SQLite database; for PostgreSQL use pg_dump (docs/operations.md)")
    import sqlite3

    from coby.archive import backup_sqlite
    from coby.db.sqlite import sqlite_path
    try:
        size = backup_sqlite(sqlite_path(settings.storage_url), out)
    except (OSError, sqlite3.Error) as e:
        _fail(f"backup failed: {e}", 1)
    typer.echo(f"backed up {settings.storage_url} to {out} ({size} bytes)")


@app.command()
def version() -> None:
    """Print coby's version and its key dependencies' versions."""
    import ccxt
    typer.echo(f"coby {__version__} (ccxt {ccxt.__version__}, python {sys.version.split()[0]})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
