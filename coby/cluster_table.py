"""``coby status``'s cluster section: every collector, and the symbols nobody serves (from /api/v1/status)."""

from __future__ import annotations

from typing import Any


def cluster_table(cluster: dict[str, Any] | None) -> str:
    """The cluster section of a status body as text ('' when the node is not part of a cluster)."""
    if not cluster:
        return ""
    if "error" in cluster:
        return f"\ncluster: {cluster['error']}"
    rows = [("collector", "shard", "standby", "symbols", "venues", "storage", "loop_lag_s", "pending", "refused")]
    for c in cluster.get("collectors", []):
        venues = c.get("venues", {})
        up = sum(1 for v in venues.values() if v.get("state") == "connected")
        health, lag = c.get("health", {}), c.get("lag", {})
        rows.append((c["id"], str(c.get("shard") or "-"), "yes" if c.get("standby") else "no",
                     ",".join(c.get("symbols", [])) or "-", f"{up}/{len(venues)}",
                     "ok" if health.get("storage") else "DOWN", str(lag.get("loop_lag_s", "-")),
                     str(lag.get("pending_rows", "-")), ",".join(c.get("refused", {})) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["", "cluster: " + f"{cluster.get('covered', 0)}/{cluster.get('symbols', 0)} symbols covered, "
             f"{len(cluster.get('collectors', []))} collectors"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if cluster.get("uncovered"):
        lines.append("UNCOVERED (no owner): " + ", ".join(cluster["uncovered"]))
    if cluster.get("refused"):
        lines.append("refused (claimed by two collectors; the second refused): " + ", ".join(cluster["refused"]))
    return "\n".join(lines)
