"""`vlcurate report OUT`: one self-contained HTML page (OUT/report.html) with the funnel, the drop reasons,
score histograms, token lengths and pack fill. Plain HTML + inline SVG, no plotting library."""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.bar{fill:#4878a8}.drop{fill:#c8553d}h2{margin-top:1.6em}
.hists{display:flex;flex-wrap:wrap;gap:18px}.hist{font-size:12px}code{background:#f3f3f3;padding:1px 4px}"""


def histogram_svg(values: list[float], title: str, bins: int = 24, width: int = 320, height: int = 120) -> str:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return ""
    lo, hi = float(arr.min()), float(arr.max())
    counts, edges = np.histogram(arr, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    peak = max(int(counts.max()), 1)
    w = width / bins
    bars = "".join(
        f'<rect class="bar" x="{i * w:.1f}" y="{height - c / peak * height:.1f}" width="{w - 1:.1f}" '
        f'height="{c / peak * height:.1f}"><title>{edges[i]:.4g}–{edges[i + 1]:.4g}: {c}</title></rect>'
        for i, c in enumerate(counts))
    return (f'<div class="hist"><b>{html.escape(title)}</b> (n={arr.size}, median {np.median(arr):.4g})<br>'
            f'<svg width="{width}" height="{height + 14}">{bars}<text x="0" y="{height + 12}">{lo:.4g}</text>'
            f'<text x="{width}" y="{height + 12}" text-anchor="end">{hi:.4g}</text></svg></div>')


def _funnel(stats: dict[str, Any]) -> str:
    rows = []
    first = max(stats.get("records_in", 0), 1)
    for key, st in stats.get("stages", {}).items():
        if not st or "in" not in st:
            continue
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(st.get("dropped", {}).items(), key=lambda kv: -kv[1]))
        kept = st.get("kept", 0)
        bar = f'<svg width="200" height="12"><rect class="bar" width="{200 * kept / first:.1f}" height="12"/></svg>'
        extra = f" → {st['samples']} samples" if "samples" in st else ""
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{st['in']}</td><td>{kept}{extra}</td><td>{bar}</td>"
                    f"<td style='text-align:left'>{html.escape(dropped)}</td><td>{st.get('seconds', 0):.2f}</td></tr>")
    return ("<table><tr><th>stage</th><th>in</th><th>kept</th><th></th><th>dropped by reason</th><th>s</th></tr>"
            + "".join(rows) + "</table>")


def build_report(out: str) -> str:
    import pyarrow.parquet as pq

    from pipeline.storage import Store

    store = Store(out)
    stats = json.loads(store.read_bytes("stats.json"))
    manifest = pq.read_table(store.path("manifest.parquet"), filesystem=store.fs)
    rejects = pq.read_table(store.path("rejects.parquet"), filesystem=store.fs)
    parts = [f"<!doctype html><meta charset=utf-8><title>vlcurate report</title><style>{STYLE}</style>",
             f"<h1>vlcurate report</h1><p><code>{html.escape(out)}</code>: {stats['records_in']} records in, "
             f"{stats['kept']} kept, {stats['rejected']} rejected, {stats['wall_seconds']:.1f} s.</p>",
             "<h2>Funnel</h2>", _funnel(stats), "<h2>Drop reasons</h2><table><tr><th>reason</th><th>rows</th>"
             "<th>stage</th><th>example</th></tr>"]
    rej = rejects.select(["drop_reason", "drop_stage", "source"]).to_pylist()
    for reason, n in stats.get("rejected_by_reason", {}).items():
        ex = next((r for r in rej if r["drop_reason"] == reason), {})
        parts.append(f"<tr><td>{html.escape(reason)}</td><td>{n}</td><td>{html.escape(str(ex.get('drop_stage')))}</td>"
                     f"<td style='text-align:left'>{html.escape(str(ex.get('source')))}</td></tr>")
    parts.append("</table><h2>Scores of kept samples</h2><div class=hists>")
    skip = {"id", "parent_id", "shard", "key", "source", "text", "pack_shard", "pack_pos"}
    for name in manifest.column_names:
        col = manifest[name]
        if name in skip or not (col.type.num_fields == 0 and str(col.type) in ("int64", "double", "int32", "float")):
            continue
        parts.append(histogram_svg(col.to_pylist(), name))
    parts.append("</div>")
    if store.exists("packs.parquet"):
        packs = pq.read_table(store.path("packs.parquet"), filesystem=store.fs)
        summary = stats.get("stages", {}).get("pack", {}).get("summary", {})
        parts.append(f"<h2>Packing</h2><p>{packs.num_rows} packs, fill {summary.get('fill', 0):.4%}, "
                     f"lower bound {summary.get('lower_bound_packs')} packs.</p><div class=hists>"
                     + histogram_svg(packs["fill"].to_pylist(), "fill per pack")
                     + histogram_svg([len(m) for m in packs["members"].to_pylist()], "members per pack") + "</div>")
    page = "\n".join(p for p in parts if p)
    store.write_bytes(page.encode("utf-8"), "report.html")
    return store.path("report.html")
