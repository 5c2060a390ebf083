"""Rewrite README.md's configuration table from coby.config (the one place settings are declared).

    .venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import re
from pathlib import Path

from coby.config import documented_settings

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def _default(d: object) -> str:
    if d in (None, "", {}, ()):
        return "—"
    if isinstance(d, tuple):
        d = ",".join(d)
    elif isinstance(d, dict):
        d = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
    return f"`{d}`"


def table() -> str:
    rows = ["| setting | default | environment | meaning |", "|---|---|---|---|"]
    for name, default, env, help_ in documented_settings():
        rows.append(f"| `{name}` | {_default(default)} | {', '.join(f'`{e}`' for e in env) or '—'} | "
                    f"{help_.replace('|', '/')} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), f"{START}\n{table()}\n{END}", text, flags=re.S)
    README.write_text(new)


if __name__ == "__main__":
    main()
