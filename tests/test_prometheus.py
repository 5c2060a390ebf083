"""deploy/: Prometheus's configuration, the alert rules and the Grafana dashboards, checked by the real
Prometheus (Debian's ``prometheus`` package; scripts/test.sh installs it) scraping a simulated coby."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                reason="prometheus/promtool not installed (scripts/test.sh installs them)")
COBY = [sys.executable, "-m", "coby.cli"]
TOKEN = "prometheus-test-token"
# what Grafana substitutes in the panels' queries
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$symbol": "BTC-USDT"}
SERIES = re.compile(r"\b((?:coby|process)_[a-z0-9_]+|coby:[a-z0-9_]+|up)\b")


def _deploy_copy(tmp_path: Path) -> Path:
    """deploy/prometheus.yml and alerts.yml as they are, beside the token file the compose service writes."""
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    (tmp_path / "coby_api_token").write_text(TOKEN)
    return tmp_path / "prometheus.yml"


def _alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def _panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append((path.name, p["title"], expr))
    return out


def test_promtool_passes_the_config_the_rules_and_their_unit_tests(tmp_path):
    """`promtool check config` and `check rules` accept deploy/; `promtool test rules deploy/alerts_test.yml`
    fires each alert on synthetic series showing its failure and none on a healthy daemon's."""
    config = _deploy_copy(tmp_path)
    for args in (["check", "config", str(config)], ["check", "rules", str(DEPLOY / "alerts.yml")],
                 ["test", "rules", str(DEPLOY / "alerts_test.yml")]):
        r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "alerts_test.yml").read_text()))
    alerts = {name for name in _alert_exprs() if not name.startswith("coby:")}
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"


def test_every_runbook_line_points_at_a_section_of_the_operations_guide():
    """Each alert's `runbook` annotation is docs/operations.md#ANCHOR, and ANCHOR is one of its headings
    (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens)."""
    doc = (DEPLOY.parent / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in anchors, rule["alert"]
        assert rule["annotations"]["summary"]


def test_the_dashboards_are_the_generated_ones_and_well_formed():
    """deploy/grafana/dashboards/*.json are what scripts/grafana_dashboards.py writes (no hand edits that the
    next run would lose); each panel has a unique id, fits the 24-column grid, and queries the provisioned
    datasource (uid prometheus, deploy/grafana/provisioning/datasources/prometheus.yml)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("grafana_dashboards", DEPLOY.parent / "scripts" /
                                                  "grafana_dashboards.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    boards = {"coby-operations.json": gen.dashboard("coby-operations", "coby: operations", gen.OPERATIONS, []),
              "coby-market.json": gen.dashboard("coby-market", "coby: market", gen.MARKET, [gen.SYMBOL_VARIABLE])}
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    for name, board in boards.items():
        on_disk = json.loads((DEPLOY / "grafana" / "dashboards" / name).read_text())
        assert on_disk == json.loads(json.dumps(board)), f"{name}: run scripts/grafana_dashboards.py"
        ids = [p["id"] for p in on_disk["panels"]]
        assert len(ids) == len(set(ids))
        for p in on_disk["panels"]:
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            assert all(t["datasource"]["uid"] == uid for t in p.get("targets", []))


def _query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _wait(what: str, ok, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = ok()
            if value:
                return value
        except OSError:
            value = None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_every_series_of_the_alerts_and_dashboards_exists_in_a_real_prometheus(tmp_path):
    """A real Prometheus, configured by deploy/prometheus.yml (only the target and the intervals changed),
    scrapes `coby run --simulate` with its bearer token: every series an alert rule uses exists, every
    Grafana panel's query returns data, every rule evaluates without error, and a healthy daemon fires
    no alert."""
    port, prom_port = free_port(), free_port()
    env = {**os.environ, "COBY_API_TOKEN": TOKEN, "COBY_SIMULATOR_PORT": "0", "LOG_LEVEL": "WARNING",
           "COBY_SHUTDOWN_TIMEOUT": "5"}
    coby_log = (tmp_path / "coby.log").open("wb")
    coby = subprocess.Popen([*COBY, "run", "--simulate", "--port", str(port), "--exchanges", "binance,okx,kraken",
                             "--symbols", "BTC-USDT", "--data-dir", str(tmp_path / "data")],
                            stdout=coby_log, stderr=subprocess.STDOUT, env=env)
    config_path = _deploy_copy(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config_path.write_text(yaml.safe_dump(config))
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=prom_log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        up = _wait("coby scraped", lambda: _query(base, 'up{job="coby"} == 1'), 90)
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        names = {n for expr in _alert_exprs().values() for n in SERIES.findall(expr)}
        missing: set[str] = set()
        deadline = time.monotonic() + 60
        while True:  # rates need two scrapes; the market gauges the first aggregation ticks
            missing = {n for n in names if not _query(base, n)}
            empty = [(board, title, expr) for board, title, expr in _panel_queries() if not _query(base, expr)]
            if not missing and not empty or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not missing, f"series used by deploy/alerts.yml that coby does not export: {sorted(missing)}"
        assert not empty, f"Grafana panels whose query returns no data: {empty}"
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == len(_alert_exprs())
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        assert _query(base, 'ALERTS{alertstate="firing"}') == []
    finally:
        for proc in (prom, coby):
            proc.send_signal(signal.SIGTERM)
        for proc in (prom, coby):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        coby_log.close()
        prom_log.close()
