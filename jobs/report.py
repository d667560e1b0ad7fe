"""`vlcurate report OUT`: one self-contained HTML page (OUT/report.html, images embedded, no network).

It shows the funnel per stage; per score column the distribution of every scored row, kept and dropped
stacked, with the recipe's threshold (or the cut a top fraction made) marked; example thumbnails at low,
median and high values; a few examples per drop reason; caption lengths; pack fill; for a mix its per-source
counts (stats.json ``sources``); for a chain-of-thought job its candidates per prompt and pass rates by verifier
and by quality / verification / verdict reason (OUT/candidates.parquet); the run's metadata.
Plain HTML + inline SVG, no plotting library, no script.

Thresholds are read from job.json's recipe: a numeric stage parameter ``min_S`` / ``max_S`` marks the score
column named ``S`` or ending in ``_S`` (``min_clip_score`` -> ``clip_score``, ``min_words`` ->
``caption_words``, ``max_tokens`` -> ``n_tokens``); a stage's ``keep_top_fraction`` marks, on the column its
``min_`` parameter names, the lowest value that passed the stage. Thumbnails of dropped rows are the ones the
runner kept (pipeline/thumbs.py); kept rows' come from their shards.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from formatters.draw import thumbnail
from pipeline import thumbs
from pipeline.storage import Store
from pipeline.tar import split_name

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right;
vertical-align:top}td:first-child,th:first-child{text-align:left}.bar{fill:#4878a8}.drop{fill:#e8a33d}
.cut{stroke:#ff00ff;stroke-width:2}h2{margin-top:1.6em}.hists{display:flex;flex-wrap:wrap;gap:22px}
.hist{font-size:12px;width:340px}.ex{display:flex;gap:6px;margin-top:4px}.ex figure{margin:0;width:108px;font-size:11px}
.ex img{width:108px;height:81px;object-fit:contain;background:#eee}.thumbs{display:flex;flex-wrap:wrap;gap:6px}
.thumbs figure{margin:0;width:128px;font-size:11px;overflow-wrap:anywhere}.thumbs img{width:128px;height:96px;
object-fit:contain;background:#eee}code,pre{background:#f3f3f3;padding:1px 4px}pre{max-height:320px;overflow:auto}
.key span{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}"""
NOT_PLOTTED = {"id", "parent_id", "shard", "key", "source", "text", "drop_stage", "drop_reason", "meta", "sha256",
               "phash", "phashes", "duplicate_of", "captions", "pack_shard", "pack_pos", "pack_id"}
QUANTILES = (("low", 0.02), ("median", 0.5), ("high", 0.98))
WIDTH, HEIGHT = 320, 110


def plotted(name: str, dtype: Any) -> bool:
    """Whether a column is a score to plot: numeric (not bool), not a hash, id or placement column."""
    import pyarrow as pa

    if name in NOT_PLOTTED or name.endswith(("_id", "_ids")) or "hash" in name or "sha" in name:
        return False
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _finite(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        arr = values.astype(float)
    else:
        arr = np.asarray([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def histogram_svg(kept: list[Any], dropped: list[Any] | None, title: str, markers: list[tuple[float, str]] = (),
                  bins: int = 30) -> str:
    """Kept and dropped values stacked in one histogram over their common range, each marker a vertical
    line (class ``cut``) at its value; the axis range is in the svg's ``data-lo`` / ``data-hi``."""
    k, d = _finite(kept), _finite(dropped if dropped is not None else [])
    both = np.concatenate([k, d])
    if both.size == 0:
        return ""
    lo, hi = float(both.min()), float(both.max())
    for value, _ in markers:
        lo, hi = min(lo, value), max(hi, value)
    integer = bool(np.all(both == np.round(both))) and hi - lo < bins
    if integer:  # one bar per integer value
        lo, hi = lo - 0.5, hi + 0.5
        bins = int(hi - lo)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    ck, _ = np.histogram(k, bins=edges)
    cd, _ = np.histogram(d, bins=edges)
    peak = max(int((ck + cd).max()), 1)
    w = WIDTH / bins

    def x(v: float) -> float:
        return (v - lo) / (hi - lo) * WIDTH

    rects = []
    for i in range(bins):
        hk, hd = ck[i] / peak * HEIGHT, cd[i] / peak * HEIGHT
        tip = f"<title>{_fmt(edges[i])}–{_fmt(edges[i + 1])}: {ck[i]} kept, {cd[i]} dropped</title>"
        if ck[i]:
            rects.append(f'<rect class="bar" x="{i * w:.2f}" y="{HEIGHT - hk:.2f}" width="{max(w - 1, 0.5):.2f}" '
                         f'height="{hk:.2f}">{tip}</rect>')
        if cd[i]:
            rects.append(f'<rect class="drop" x="{i * w:.2f}" y="{HEIGHT - hk - hd:.2f}" '
                         f'width="{max(w - 1, 0.5):.2f}" height="{hd:.2f}">{tip}</rect>')
    lines = "".join(f'<line class="cut" data-value="{value!r}" x1="{x(value):.2f}" x2="{x(value):.2f}" y1="0" '
                    f'y2="{HEIGHT}"><title>{html.escape(label)}</title></line>' for value, label in markers)
    cuts = "; ".join(html.escape(label) for _, label in markers)
    split = "" if dropped is None else f" ({k.size} kept, {d.size} dropped)"
    return (f'<b>{html.escape(title)}</b> n={both.size}{split}, median '
            f'{_fmt(float(np.median(both)))}' + (f'<br><span style="color:#b0b">cut: {cuts}</span>' if cuts else "")
            + f'<br><svg class="histogram" data-column="{html.escape(title)}" data-lo="{lo!r}" data-hi="{hi!r}" '
            f'width="{WIDTH}" height="{HEIGHT + 14}" style="display:block">{"".join(rects)}{lines}'
            f'<text x="0" y="{HEIGHT + 12}">{_fmt(lo if not integer else lo + 0.5)}</text>'
            f'<text x="{WIDTH}" y="{HEIGHT + 12}" text-anchor="end">{_fmt(hi if not integer else hi - 0.5)}</text>'
            "</svg>")


def _stage_params(recipe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The recipe's stages (and its format / pack sections) that ran, by key, with their parameters."""
    out = {k: v for k, v in (recipe.get("stages") or {}).items() if isinstance(v, dict) and v.get("enabled", True)}
    for section in ("format", "pack"):
        if isinstance(recipe.get(section), dict):
            out[section] = recipe[section]
    return out


def thresholds(recipe: dict[str, Any], columns: list[str]) -> dict[str, list[tuple[str, str, float | None]]]:
    """column -> [(stage, parameter, value)]: the recipe's numeric ``min_`` / ``max_`` parameters on that
    column, and ``keep_top_fraction`` (value None: the cut is measured) on the column its ``min_`` names."""
    out: dict[str, list[tuple[str, str, float | None]]] = {}
    for stage, params in _stage_params(recipe).items():
        for name, value in params.items():
            if not name.startswith(("min_", "max_")) or name.endswith(("_pixels", "_px")):
                continue
            stem = name[4:]
            for col in columns:
                if col == stem or col.endswith("_" + stem):
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        out.setdefault(col, []).append((stage, name, float(value)))
                    elif value is None and params.get("keep_top_fraction") is not None:
                        out.setdefault(col, []).append((stage, f"keep_top_fraction={params['keep_top_fraction']}",
                                                        None))
    return out


def _img(data: bytes | None, alt: str) -> str:
    if not data:
        return '<div style="width:100%;height:81px;background:#eee;font-size:11px">no image kept</div>'
    return f'<img alt="{html.escape(alt)}" src="data:image/jpeg;base64,{base64.b64encode(data).decode()}">'


def _kept_thumbs(store: Store, wanted: dict[str, str]) -> dict[str, bytes]:
    """id -> thumbnail of its first image, for kept rows {id: shard}; each shard is read once."""
    by_shard: dict[str, set[str]] = {}
    for row_id, shard in wanted.items():
        if shard:
            by_shard.setdefault(shard, set()).add(row_id)
    out: dict[str, bytes] = {}
    for shard, ids in sorted(by_shard.items()):
        try:
            with store.fs.open_input_file(store.path("shards", shard)) as f:
                for key, data in _first_images(f, ids):
                    thumb = thumbnail(data, thumbs.PX)
                    if thumb:
                        out[key] = thumb
        except (OSError, ValueError):
            continue
    return out


def _first_images(f: Any, ids: set[str]) -> Any:
    """(key, bytes of its image 0) for the keys in ``ids``, from a shard tar opened for random access: only the
    512-byte headers are read until every key is found, and the wanted images (a shard of a real job is up to
    ``output.shard_bytes``, 1 GB by default; the report shows a few of its samples)."""
    left, name, pos = set(ids), None, 0
    size_total = f.size()
    while left and pos + 512 <= size_total:
        f.seek(pos)
        header = f.read(512)
        if header == b"\0" * 512:
            break
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        kind, pos = header[156:157], pos + 512
        if kind == b"L":  # GNU long name: the next entry's name is this entry's data
            name = f.read(size).split(b"\0", 1)[0].decode()
        elif kind in (b"0", b"\0"):
            key, suffix = split_name(name or header[:100].split(b"\0", 1)[0].decode())
            if key in left and suffix.split(".")[0] == "0" and not suffix.endswith("npy"):
                left.discard(key)
                yield key, f.read(size)
            name = None
        pos += -(-size // 512) * 512


class Rows:
    """The kept and dropped rows (read once); score columns as float arrays, NaN where missing."""

    def __init__(self, manifest: Any, rejects: Any) -> None:
        self.manifest, self.rejects = manifest, rejects
        self.kept = {c: self._list(manifest, c) for c in ("id", "text", "shard")}
        self.dropped = {c: self._list(rejects, c) for c in ("id", "text", "source", "drop_stage", "drop_reason",
                                                            "meta")}
        self.types = {**{f.name: f.type for f in rejects.schema}, **{f.name: f.type for f in manifest.schema}}

    @staticmethod
    def _list(table: Any, name: str) -> list[Any]:
        return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows

    @staticmethod
    def _values(table: Any, name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.full(table.num_rows, np.nan)
        return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=float)

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self._values(self.manifest, name), self._values(self.rejects, name)


def _examples(rows: Rows, picks: list[tuple[str, str, float, str | None, str]], dropped_thumbs: dict[str, bytes],
              kept_thumbs: dict[str, bytes]) -> str:
    figs = []
    for label, row_id, value, text, status in picks:
        thumb = kept_thumbs.get(row_id) if status == "kept" else dropped_thumbs.get(row_id)
        figs.append(f"<figure>{_img(thumb, row_id)}<figcaption><b>{label}</b> {_fmt(value)} ({status})<br>"
                    f"{html.escape((text or '')[:70])}</figcaption></figure>")
    return f'<div class="ex">{"".join(figs)}</div>' if figs else ""


def _example_rows(rows: Rows, kept: np.ndarray, dropped: np.ndarray,
                  dropped_thumbs: dict[str, bytes]) -> list[tuple[str, str, float, str | None, str]]:
    """(label, id, value, text, kept/dropped) nearest to the low / median / high quantile of the column, among
    the rows whose picture can be shown (kept rows, dropped rows with a kept thumbnail)."""
    values = np.concatenate([kept[np.isfinite(kept)], dropped[np.isfinite(dropped)]])
    if values.size == 0:
        return []
    shown = np.array([i in dropped_thumbs for i in rows.dropped["id"]], dtype=bool) if dropped_thumbs else \
        np.zeros(len(dropped), dtype=bool)
    pools = (("kept", kept, rows.kept), ("dropped", np.where(shown, dropped, np.nan), rows.dropped))
    out, seen = [], set()
    for label, q in QUANTILES:
        target = float(np.quantile(values, q))
        best = None
        for status, arr, cols in pools:
            dist = np.abs(arr - target)
            if np.isfinite(dist).any():
                j = int(np.nanargmin(dist))
                if best is None or dist[j] < best[0]:
                    best = (float(dist[j]), cols["id"][j], float(arr[j]), cols["text"][j], status)
        if best is not None and best[1] not in seen:
            seen.add(best[1])
            out.append((label, *best[1:]))
    return out


def _cut_markers(rows: Rows, col: str, marks: list[tuple[str, str, float | None]]) -> list[tuple[float, str]]:
    out = []
    for stage, param, value in marks:
        if value is not None:
            out.append((value, f"{stage}.{param} = {_fmt(value)}"))
            continue
        kept, dropped = rows.column(col)
        other = np.array([s != stage for s in rows.dropped["drop_stage"]], dtype=bool)
        passed = _finite(np.concatenate([kept, dropped[other]]))
        if passed.size:
            cut = float(passed.min())
            out.append((cut, f"{stage}.{param}: lowest value kept {_fmt(cut)}"))
    return out


def _funnel(stats: dict[str, Any]) -> str:
    rows = []
    first = max(stats.get("records_in", 0), 1)
    for key, st in stats.get("stages", {}).items():
        if not st or "in" not in st:
            continue
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(st.get("dropped", {}).items(), key=lambda kv: -kv[1]))
        kept = st.get("kept", 0)
        bar = f'<svg width="200" height="12"><rect class="bar" width="{200 * min(kept / first, 1):.1f}" height="12"/></svg>'
        extra = f" → {st['samples']} samples" if "samples" in st else ""
        seconds = st.get("seconds", 0) + st.get("decide_seconds", 0)
        rows.append(f"<tr><td>{html.escape(key)}</td><td>{st['in']}</td><td>{kept}{extra}</td><td>{bar}</td>"
                    f"<td style='text-align:left'>{html.escape(dropped)}</td><td>{seconds:.2f}</td></tr>")
    return ("<table><tr><th>stage</th><th>in</th><th>kept</th><th></th><th>dropped by reason</th>"
            "<th>s (all workers)</th></tr>" + "".join(rows) + "</table>")


def _reasons(stats: dict[str, Any], rows: Rows, kept_by_reason: dict[tuple[str, str], list[dict]]) -> str:
    parts = ["<table><tr><th>reason</th><th>rows</th><th>stage</th><th style='text-align:left'>examples</th></tr>"]
    detail: dict[str, str] = {}
    for i, m in zip(rows.dropped["id"], rows.dropped["meta"], strict=True):
        try:
            meta = json.loads(m) if m else {}
        except ValueError:
            meta = {}
        if meta.get("error") or meta.get("image_error"):
            detail[i] = str(meta.get("error") or meta.get("image_error"))
    source = dict(zip(rows.dropped["id"], rows.dropped["source"], strict=True))
    first_of: dict[str, list[str]] = {}
    stage_of: dict[str, str] = {}
    for i, r, s in zip(rows.dropped["id"], rows.dropped["drop_reason"], rows.dropped["drop_stage"], strict=True):
        stage_of.setdefault(r, s)
        if len(first_of.setdefault(r, [])) < 3:
            first_of[r].append(i)
    for reason, n in stats.get("rejected_by_reason", {}).items():
        stage = stage_of.get(reason)
        pictures = kept_by_reason.get((stage, reason), [])[:6]
        ids = [p["id"] for p in pictures] or first_of.get(reason, [])
        thumbs_of = {p["id"]: p["thumb"] for p in pictures}
        figs = "".join(
            f"<figure>{_img(thumbs_of.get(i), i) if pictures else ''}<figcaption>{html.escape(str(source.get(i))[-40:])}"
            + (f"<br><i>{html.escape(detail[i][:90])}</i>" if i in detail else "") + "</figcaption></figure>"
            for i in ids)
        parts.append(f"<tr><td>{html.escape(reason)}</td><td>{n}</td><td>{html.escape(str(stage))}</td>"
                     f"<td style='text-align:left'><div class=thumbs>{figs}</div></td></tr>")
    return "".join(parts) + "</table>"


def _metadata(job: dict[str, Any], stats: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (job.get("versions") or {}).items())
    return (f"<p>input <code>{html.escape(str(job.get('input_path')))}</code>, {job.get('partitions')} partition(s), "
            f"{stats.get('partitions_resumed', 0)} partition-step(s) resumed, {stats.get('wall_seconds', 0):.1f} s "
            f"wall.</p><p>versions: {html.escape(versions)}</p><details><summary>recipe (resolved, from job.json)"
            f"</summary><pre>{html.escape(json.dumps(job.get('recipe'), indent=2))}</pre></details>")


def _pct(n: int, of: int) -> str:
    return f"{n} ({n / of:.1%})" if of else str(n)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sources(stats: dict[str, Any]) -> str:
    """A mix's per-source counts (stats.json ``sources``): asked and achieved shares, samples, tokens, repeats,
    what each source had and rejected; the mix's shortfall warnings."""
    sources = stats.get("sources")
    if not isinstance(sources, dict) or not sources:
        return ""
    rows = [[name, s.get("kind", ""), f"{s.get('asked_share', 0):.2%}", f"{s.get('achieved_share', 0):.2%}",
             f"{s.get('samples', 0):,}", f"{s.get('tokens', 0):,}", f"{s.get('repeated_samples', 0):,}",
             f"{s.get('available_samples', 0):,}", f"{s.get('rejected', 0):,}", s.get("path", "")]
            for name, s in sources.items()]
    warnings = "".join(f"<li>{html.escape(str(w))}</li>" for w in stats.get("warnings") or [])
    return (f"<h2>Sources</h2><p>mixed by {html.escape(str(stats.get('by')))}, seed {stats.get('seed')}: "
            f"{stats.get('samples', 0):,} samples, {stats.get('tokens', 0):,} tokens.</p>"
            + _table(["source", "kind", "asked", "achieved", "samples", "tokens", "repeated", "available",
                      "rejected", "path"], rows)
            + (f"<p>warnings:</p><ul>{warnings}</ul>" if warnings else ""))


CANDIDATE_COLUMNS = ("parent_id", "cot_kind", "cot_correct", "cot_verify_reason", "cot_quality_reason",
                     "cot_verdict", "cot_reason", "cot_selected")


def _candidates(store: Store) -> str:
    """A chain-of-thought job's candidates (OUT/candidates.parquet): candidates and passing candidates per
    prompt; per verifier (``cot_kind``) how many answers it verified and how many passed every check; per
    quality reason, per verification reason and per verdict reason how many candidates it failed."""
    import pyarrow.parquet as pq

    if not store.exists("candidates.parquet"):
        return ""
    table = pq.read_table(store.path("candidates.parquet"), filesystem=store.fs)
    cols = {c: Rows._list(table, c) for c in CANDIDATE_COLUMNS}
    n = table.num_rows
    per_prompt: dict[str, list[int]] = {}
    for prompt, verdict in zip(cols["parent_id"], cols["cot_verdict"], strict=True):
        counts = per_prompt.setdefault(prompt, [0, 0])
        counts[0] += 1
        counts[1] += verdict == "pass"
    by_kind: dict[str, list[int]] = {}
    for kind, correct, verdict, selected in zip(cols["cot_kind"], cols["cot_correct"], cols["cot_verdict"],
                                                cols["cot_selected"], strict=True):
        k = by_kind.setdefault(str(kind), [0, 0, 0, 0])
        k[0] += 1
        k[1] += bool(correct)
        k[2] += verdict == "pass"
        k[3] += bool(selected)
    kinds = [[kind, f"{c[0]:,}", _pct(c[1], c[0]), _pct(c[2], c[0]), f"{c[3]:,}"] for kind, c in sorted(by_kind.items())]
    reasons = []
    for column, what in (("cot_quality_reason", "quality"), ("cot_verify_reason", "verifier"),
                         ("cot_reason", "verdict")):
        counts: dict[str, list[int]] = {}
        for reason, correct in zip(cols[column], cols["cot_correct"], strict=True):
            if reason:
                c = counts.setdefault(reason, [0, 0])
                c[0] += 1
                c[1] += bool(correct)
        reasons += [[what, reason, _pct(c[0], n), f"{c[1]:,}"]
                    for reason, c in sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))]
    solved = sum(1 for c in per_prompt.values() if c[1])
    return (f"<h2>Chain-of-thought candidates</h2><p>{n:,} candidates for {len(per_prompt):,} prompts; "
            f"{_pct(solved, len(per_prompt))} prompts have a passing candidate.</p><div class=hists><div class=hist>"
            + histogram_svg([c[0] for c in per_prompt.values()], None, "candidates per prompt")
            + "</div><div class=hist>"
            + histogram_svg([c[1] for c in per_prompt.values()], None, "passing candidates per prompt")
            + "</div></div><h3>Pass rate by verifier</h3>"
            + _table(["verifier", "candidates", "answer verified", "passed every check", "selected"], kinds)
            + "<h3>Failures by reason</h3>"
            + _table(["check", "reason", "candidates", "of which answer verified"], reasons))


def _read_json(store: Store, name: str) -> dict[str, Any]:
    return json.loads(store.read_bytes(name)) if store.exists(name) else {}


def build_report(out: str) -> str:
    """Write OUT/report.html and return its path. Raises FileNotFoundError when OUT is not a finished job."""
    import pyarrow.parquet as pq

    store = Store(out)
    for name in ("stats.json", "manifest.parquet", "rejects.parquet"):
        if not store.exists(name):
            raise FileNotFoundError(name)
    stats = json.loads(store.read_bytes("stats.json"))
    job = _read_json(store, "job.json")
    rows = Rows(pq.read_table(store.path("manifest.parquet"), filesystem=store.fs),
                pq.read_table(store.path("rejects.parquet"), filesystem=store.fs))
    kept_by_reason = thumbs.load(store)
    dropped_thumbs = {t["id"]: t["thumb"] for group in kept_by_reason.values() for t in group}
    columns = [c for c, t in rows.types.items() if plotted(c, t)]
    marks = thresholds(job.get("recipe") or {}, columns)
    # which kept rows are shown as examples: read their shards once
    picks = {col: _example_rows(rows, *rows.column(col), dropped_thumbs) for col in columns}
    shard_of = dict(zip(rows.kept["id"], rows.kept["shard"], strict=True))
    kept_thumbs = _kept_thumbs(store, {p[1]: shard_of[p[1]] for ps in picks.values() for p in ps if p[4] == "kept"})

    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>vlcurate report</title><style>{STYLE}</style>",
             f"<h1>vlcurate report</h1><p><code>{html.escape(out)}</code>: "
             + (f"{stats.get('records_in', 0)} records in, " if "records_in" in stats else "a mix: ")
             + f"{stats.get('kept', rows.manifest.num_rows)} kept, {stats.get('rejected', rows.rejects.num_rows)} "
             "rejected.</p>", _sources(stats),
             *(("<h2>Funnel</h2>", _funnel(stats)) if stats.get("stages") else ()), _candidates(store), "<h2>Drop reasons</h2>", _reasons(stats, rows, kept_by_reason),
             '<h2>Scores</h2><p class=key>every scored row:<span class=bar style="background:#4878a8"></span>kept'
             '<span style="background:#e8a33d"></span>dropped (at any stage)<span style="background:#ff00ff;width:3px">'
             "</span>the recipe's cut</p><div class=hists>"]
    for col in columns:
        kept, dropped = rows.column(col)
        svg = histogram_svg(kept, dropped, col, _cut_markers(rows, col, marks.get(col, [])))
        if svg:
            parts.append(f'<div class="hist">{svg}{_examples(rows, picks[col], dropped_thumbs, kept_thumbs)}</div>')
    parts.append("</div><h2>Caption length</h2><div class=hists><div class=hist>")
    parts.append(histogram_svg([len(t) if t else 0 for t in rows.kept["text"]],
                               [len(t) if t else 0 for t in rows.dropped["text"]], "caption characters"))
    parts.append("</div></div>")
    if store.exists("packs.parquet"):
        packs = pq.read_table(store.path("packs.parquet"), filesystem=store.fs)
        summary = (stats.get("stages", {}).get("pack") or {}).get("summary") or stats.get("pack") or {}
        parts.append(f"<h2>Packing</h2><p>{packs.num_rows} packs, fill {summary.get('fill', 0):.4%}, "
                     f"lower bound {summary.get('lower_bound_packs')} packs.</p><div class=hists><div class=hist>"
                     + histogram_svg(packs["fill"].to_pylist(), None, "fill per pack") + "</div><div class=hist>"
                     + histogram_svg([len(m) for m in packs["members"].to_pylist()], None, "members per pack")
                     + "</div></div>")
    parts.append("<h2>Run</h2>" + _metadata(job, stats) + "</html>")
    page = "\n".join(p for p in parts if p)
    store.write_bytes(page.encode("utf-8"), "report.html")
    return store.path("report.html")
