"""The shipped Grafana dashboard and Prometheus alerts, checked offline: structure, every metric
they use exists and is documented, PromQL that parses (promtool), alerts that fire (promtool test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, SCRIPTS

from server.http.connection import Guard, Limits
from server.metrics import Metrics
from server.settings import Settings
from server.workers.pool import WorkerPool

DASHBOARD = ROOT / "deploy" / "grafana" / "scorehost.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
_NAME = re.compile(r"\b((?:scorehost|process)_[a-z_]+)")
_SUFFIXES = ("_bucket", "_sum", "_count")


def exported() -> dict[str, str]:
    """Every family the server exports (a model store reported), by exposition name -> type."""
    settings = Settings(entry_script=str(SCRIPTS / "echo.py"))
    pool = WorkerPool(settings)
    metrics = Metrics(settings, pool, Guard(Limits()))
    metrics.models.apply(0, {"counts": {"loaded": 1}, "loads": 1, "evictions": 0,
                             "models": [["m", "1", "loaded", 0.1, 1, 0]]})  # fmt: skip
    try:
        out = {}
        for family in metrics.registry.collect():
            name = f"{family.name}_total" if family.type == "counter" else family.name
            out[name] = family.type
        return out
    finally:
        metrics.close()


def used_names(text: str) -> set[str]:
    names = set()
    for name in _NAME.findall(text):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and os.environ.get("CI"):
        pytest.fail("promtool is missing on CI: scripts/test.sh installs Debian's prometheus package")
    return found


def test_every_metric_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in exported() if name.startswith("scorehost_") and f"`{name}`" not in readme]
    assert missing == []


def test_dashboard_structure() -> None:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "scorehost" and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    names = {n.removesuffix("_total") if n.endswith("_total") else n for n in exported()}
    names |= set(exported())
    used = used_names("\n".join(dashboard_exprs())) | used_names(
        "\n".join(r["expr"] for r in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"])
    )
    assert used - names == set()
    assert {"scorehost_utilization", "scorehost_queue_wait_seconds", "scorehost_run_seconds"} <= used


def test_alerts_structure() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    (group,) = doc["groups"]
    rules = {r["alert"]: r for r in group["rules"]}
    assert {"ScorehostHigh5xxRatio", "ScorehostP99NearTimeout", "ScorehostQueueRejections",
            "ScorehostWorkerRestartLoop", "ScorehostModelsFailed"} <= set(rules)  # fmt: skip
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["expr"].strip(), name
    assert "scorehost_scoring_timeout_seconds" in rules["ScorehostP99NearTimeout"]["expr"]
    assert "0.8" in rules["ScorehostP99NearTimeout"]["expr"]


def test_promtool_checks_and_tests_the_alert_rules() -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found: apt-get install prometheus (scripts/test.sh does, as root)")
    checked = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", ALERTS_TEST.name], capture_output=True, text=True,
                            cwd=ALERTS_TEST.parent)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found: apt-get install prometheus (scripts/test.sh does, as root)")
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        plain = expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": plain})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
