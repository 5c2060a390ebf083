"""Write coby's two Grafana dashboards (deploy/grafana/dashboards/*.json) from the panel lists below.

    python scripts/grafana_dashboards.py        # regenerate; commit the JSON with this file

The JSON files are what Grafana provisions (deploy/grafana/provisioning/dashboards/coby.yml); this
script is their source, so that a panel is one line here. tests/test_prometheus.py runs every
panel's query against a real Prometheus scraping a simulated coby and checks that it returns data.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # the provisioned datasource's uid
R = "$__rate_interval"

# (title, unit, [(query, legend)], panel type) per row: (row title, panels)
OPERATIONS = [
    ("Venues", [
        ("Venues connected", "none", [("sum(coby_exchange_connected)", "connected")], "stat"),
        ("Venue connected (1) or not (0)", "none", [("coby_exchange_connected", "{{exchange}}")], "timeseries"),
        ("Seconds since a venue's last message", "s", [("coby_feed_age_seconds", "{{exchange}}")], "timeseries"),
        ("Messages/s by venue", "ops", [(f"sum by (exchange) (rate(coby_messages_total[{R}]))", "{{exchange}}")],
         "timeseries"),
        ("Reconnects, resyncs and stalls", "short", [
            (f"sum by (exchange) (increase(coby_reconnects_total[{R}]))", "reconnects {{exchange}}"),
            (f"sum by (exchange) (increase(coby_resyncs_total[{R}]))", "resyncs {{exchange}}"),
            (f"sum by (exchange) (increase(coby_stalls_total[{R}]))", "stalls {{exchange}}")], "timeseries"),
        ("Circuit open", "none", [("coby_circuit_open", "{{exchange}}")], "timeseries"),
        ("Rejected items/s by reason", "ops", [(f"sum by (reason) (rate(coby_rejects_total[{R}]))", "{{reason}}")],
         "timeseries"),
    ]),
    ("Storage", [
        ("Database up", "none", [("coby_storage_up", "up")], "stat"),
        ("Rows written/s", "ops", [(f"sum by (table) (rate(coby_storage_rows_written_total[{R}]))", "{{table}}")],
         "timeseries"),
        ("Rows held for the writer", "short", [("coby_storage_buffer_rows", "{{table}}")], "timeseries"),
        ("Journal bytes not yet in the database", "bytes", [("coby_storage_journal_bytes", "{{table}}")],
         "timeseries"),
        ("Rows lost or refused", "short", [
            (f"sum by (table, reason) (increase(coby_storage_lost_rows_total[{R}]))", "lost {{table}} {{reason}}"),
            (f"sum by (table) (increase(coby_storage_overflow_rows_total[{R}]))", "refused {{table}}")],
         "timeseries"),
        ("Flush time, p99", "s", [(f"histogram_quantile(0.99, sum by (le, table) "
                                   f"(rate(coby_storage_flush_seconds_bucket[{R}])))", "{{table}}")], "timeseries"),
        ("Rows deleted by retention (1 h)", "short",
         [("sum by (table) (increase(coby_retention_deleted_rows_total[1h]))", "{{table}}")], "timeseries"),
    ]),
    ("Cache, API and WebSocket clients", [
        ("Redis cache connected", "none", [("coby_cache_connected", "connected")], "stat"),
        ("Cache errors/s", "ops", [(f"sum by (op) (rate(coby_cache_errors_total[{R}]))", "{{op}}")], "timeseries"),
        ("HTTP requests/s by status", "reqps",
         [(f"sum by (status) (rate(coby_http_requests_total[{R}]))", "{{status}}")], "timeseries"),
        ("WebSocket clients", "short", [("coby_ws_clients", "clients")], "timeseries"),
        ("WebSocket messages sent/s", "ops",
         [(f"sum by (kind) (rate(coby_ws_messages_sent_total[{R}]))", "{{kind}}")], "timeseries"),
        ("WebSocket disconnects by reason", "short",
         [(f"sum by (reason) (increase(coby_ws_disconnects_total[{R}]))", "{{reason}}")], "timeseries"),
        ("Replay sessions", "short", [("coby_replay_sessions", "active"), ("coby_replay_sessions_max", "limit")],
         "timeseries"),
    ]),
    ("Process", [
        ("Event-loop lag", "s", [("coby_event_loop_lag_seconds", "lag")], "timeseries"),
        ("Resident memory", "bytes", [('process_resident_memory_bytes{job="coby"}', "{{instance}}")], "timeseries"),
        ("CPU", "percentunit", [(f'rate(process_cpu_seconds_total{{job="coby"}}[{R}])', "{{instance}}")],
         "timeseries"),
    ]),
]

S = 'symbol="$symbol"'
MARKET = [
    ("$symbol", [
        ("Mid price by venue", "none", [(f"coby_book_mid_price{{{S}}}", "{{exchange}}")], "timeseries"),
        ("Consolidated best bid and ask (NBBO)", "none", [
            (f"coby_consolidated_best_bid{{{S}}}", "best bid"),
            (f"coby_consolidated_best_ask{{{S}}}", "best ask")], "timeseries"),
        ("Spread by venue", "none", [(f"coby_book_spread{{{S}}}", "{{exchange}}")], "timeseries"),
        ("Consolidated spread (ask - bid; < 0: crossed across venues)", "none",
         [(f"coby_consolidated_best_ask{{{S}}} - coby_consolidated_best_bid{{{S}}}", "spread")], "timeseries"),
        ("Top-of-book imbalance (-1 asks .. 1 bids)", "none", [(f"coby_imbalance{{{S}}}", "{{exchange}}")],
         "timeseries"),
        ("Trades/s by venue (all symbols)", "ops",
         [(f'sum by (exchange) (rate(coby_messages_total{{kind="trade"}}[{R}]))', "{{exchange}}")], "timeseries"),
    ]),
]


def panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str, x: int, y: int) -> dict:
    width = 6 if kind == "stat" else 12
    return {
        "id": pid, "type": kind, "title": title, "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(65 + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard(uid: str, title: str, rows: list, variables: list[dict]) -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in rows:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for title, unit, targets, kind in row_panels:
            width = 6 if kind == "stat" else 12
            if x + width > 24:  # the next line of the grid
                x, y = 0, y + 8
            panels.append(panel(pid, title, unit, targets, kind, x, y))
            pid, x = pid + 1, x + width
        if x:
            y += 8
    return {"uid": uid, "title": title, "tags": ["coby"], "timezone": "utc", "schemaVersion": 39, "version": 1,
            "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": variables}, "annotations": {"list": []}, "panels": panels}


SYMBOL_VARIABLE = {"name": "symbol", "label": "symbol", "type": "query", "datasource": DATASOURCE,
                   "query": {"query": "label_values(coby_book_mid_price, symbol)", "refId": "symbol"},
                   "definition": "label_values(coby_book_mid_price, symbol)", "refresh": 2, "sort": 1,
                   "multi": False, "includeAll": False}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, board in (
            ("coby-operations.json", dashboard("coby-operations", "coby: operations", OPERATIONS, [])),
            ("coby-market.json", dashboard("coby-market", "coby: market", MARKET, [SYMBOL_VARIABLE]))):
        (OUT / name).write_text(json.dumps(board, indent=1) + "\n")
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
