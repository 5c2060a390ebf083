"""deploy/coby@.service, the systemd template of the scaled-out roles: ``systemd-analyze verify`` accepts an
instance of it (where systemd-analyze exists), and its ExecStart turns each instance name into the right
``coby run`` arguments - run here by /bin/sh exactly as systemd would after its own % and $$ expansion, with
``echo`` in place of coby.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "coby@.service"


def _exec_start() -> str:
    text = UNIT.read_text()
    m = re.search(r"^ExecStart=(.*?)(?<!\\)\n", text, flags=re.S | re.M)
    assert m, "no ExecStart"
    return m.group(1).replace("\\\n", "")


def _run(instance: str) -> subprocess.CompletedProcess:
    cmd = _exec_start().replace("%i", instance).replace("$$", "$").replace("/opt/coby/.venv/bin/coby", "echo coby")
    argv = cmd.split(" ", 2)  # /bin/sh -c '<script>'
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2]
    assert script[0] == script[-1] == "'"
    return subprocess.run(["/bin/sh", "-c", script[1:-1]], capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("instance,args", [
    ("collector-0-3", "coby run --role collector --shard 0/3"),
    ("collector-2-3", "coby run --role collector --shard 2/3"),
    ("collector-11-16", "coby run --role collector --shard 11/16"),
    ("standby", "coby run --role collector --standby"),
    ("api-0", "coby run --role api"),
])
def test_each_instance_name_becomes_its_role(instance: str, args: str) -> None:
    out = _run(instance)
    assert out.returncode == 0 and out.stdout.strip() == args, out


def test_an_unknown_instance_exits_2_with_one_line() -> None:
    out = _run("worker-1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "coby@worker-1: instance must be collector-K-N, standby or api-K"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_an_instance(tmp_path: Path) -> None:
    unit = tmp_path / "coby@collector-0-3.service"
    unit.write_text(UNIT.read_text())
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # the binary and the coby user need not exist here; anything else it says is a mistake in the unit
    noise = ("/opt/coby/.venv/bin/coby", "coby.service", "Failed to resolve user", "User=coby")
    problems = [ln for ln in out.stderr.splitlines() if ln.strip() and not any(n in ln for n in noise)]
    assert problems == [], out.stderr
