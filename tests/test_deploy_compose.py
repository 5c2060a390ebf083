"""docker-compose.scale.yml read as docker compose would read it (no Docker here): every coby service's settings -
the Dockerfile's environment, the compose environment with its ${VAR:-default} / ${VAR:?message} resolved, and
its command's flags - load without error in the role it is meant for; the shards cover 0..N-1 once each; there
is a standby and two API nodes; nginx mounts deploy/nginx/coby.conf, whose upstreams are exactly the API
services on the port they listen on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from coby.config import Settings
from coby.sharding import parse_shard

ROOT = Path(__file__).resolve().parents[1]
GIVEN = {"DB_PASSWORD": "pw", "COBY_API_TOKEN": "token"}  # what the operator exports (the file's header)


def _resolve(value: str, given: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":-":
            return given.get(name) or arg
        if op == ":?":
            if not given.get(name):
                raise ValueError(f"{name}: {arg}")
            return given[name]
        return given.get(name, "")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


def _flags(command: list[str]) -> dict:
    assert command[0] == "run", command
    out: dict = {}
    args = iter(command[1:])
    for a in args:
        name = a.removeprefix("--").replace("-", "_")
        out[name] = True if name == "standby" else next(args)
    return out


def _services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.scale.yml").read_text())["services"]


def _coby(services: dict) -> dict:
    return {n: s for n, s in services.items() if s.get("build") == "."}


def test_every_coby_service_loads_its_settings_in_its_role() -> None:
    services = _coby(_services())
    roles: dict[str, list[str]] = {}
    shards = []
    for name, svc in services.items():
        env = {**_dockerfile_env(), **{k: _resolve(str(v), GIVEN) for k, v in svc["environment"].items()}}
        flags = _flags(svc["command"])
        settings = Settings.load(env=env, **flags)  # a ConfigError here is a service that would exit 2
        assert settings.storage_url.startswith("postgresql://") and settings.cache_url, name
        assert settings.api_host == "0.0.0.0" and settings.api_token, name  # reachable by nginx, and guarded
        kind = "standby" if settings.standby else settings.role
        roles.setdefault(kind, []).append(name)
        if settings.shard:
            shards.append(parse_shard(settings.shard))
        assert svc["volumes"] and svc["volumes"][0].endswith(":/data"), name  # its own journal
    n = {total for _, total in shards}
    assert len(n) == 1 and sorted(k for k, _ in shards) == list(range(n.pop())), shards
    assert len(roles["standby"]) >= 1 and len(roles["api"]) >= 2, roles
    assert len({svc["volumes"][0].split(":")[0] for svc in services.values()}) == len(services)  # none shared


def test_an_operator_who_forgets_a_secret_is_told() -> None:
    svc = _coby(_services())["api-0"]
    with pytest.raises(ValueError, match="COBY_API_TOKEN"):
        {k: _resolve(str(v), {"DB_PASSWORD": "pw"}) for k, v in svc["environment"].items()}


def test_nginx_balances_exactly_the_api_services() -> None:
    services = _services()
    api = {n for n, s in _coby(services).items() if "api" in s["command"]}
    lb = next(s for s in services.values() if str(s.get("image", "")).startswith("nginx"))
    assert "./deploy/nginx/coby.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == api
    conf = (ROOT / "deploy/nginx/coby.conf").read_text()
    port = Settings.load(env={}).api_port
    for upstream in re.findall(r"upstream (\w+) \{(.*?)\}", conf, flags=re.S):
        servers = set(re.findall(r"server ([\w-]+):(\d+)", upstream[1]))
        assert servers == {(a, str(port)) for a in api}, upstream
