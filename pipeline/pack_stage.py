"""The pack step as a global stage: one packing decision over the token counts of all kept samples."""

from __future__ import annotations

import numpy as np

from filters.base import Batch, Stage
from pipeline.packing import balance_packs, pack_cost, pack_lengths, pack_stream
from pipeline.spec import PackSpec


class PackStage(Stage):
    """Packs whole samples into sequences of at most `max_len` tokens (SPEC-qwen §6).

    Rows are taken in id order, so the packs do not depend on how the input was partitioned. A sample longer
    than `max_len` is rejected with `too_long`, one without token counts with `not_tokenized`. With
    `window`, packing streams over bounded windows; with `packs_per_step`, packs are ordered so that each
    consecutive group of that many packs has nearly equal attention cost (sum of squared member lengths).
    Decision columns: `pack_id`, `pack_shard`, `pack_pos` (position of the sample inside its pack).
    """

    kind = "global"
    Params = PackSpec

    def score(self, batch: Batch) -> Batch:
        return {}

    def decide_global(self, table: Batch) -> Batch:
        p: PackSpec = self.params
        n = len(table["id"])
        tokens = table.get("n_tokens") or [None] * n
        order = sorted(range(n), key=lambda i: table["id"][i])
        reasons: list[str | None] = [None] * n
        ok = []
        for i in order:
            t = tokens[i]
            if t is None or t <= 0:
                reasons[i] = "not_tokenized"
            elif t > p.max_len:
                reasons[i] = "too_long"
            else:
                ok.append(i)
        lengths = np.array([int(tokens[i]) for i in ok], dtype=np.int64)
        if p.window:
            packs = list(pack_stream(iter(lengths.tolist()), p.max_len, window=p.window))
        else:
            packs = pack_lengths(lengths, p.max_len) if len(ok) else []
        if p.packs_per_step and packs:
            order_of_packs, _ = balance_packs(packs, lengths, p.packs_per_step)
            packs = [packs[k] for k in order_of_packs]
        pack_id: list[str | None] = [None] * n
        pack_shard: list[int | None] = [None] * n
        pack_pos: list[int | None] = [None] * n
        for k, members in enumerate(packs):
            for j, m in enumerate(members):
                row = ok[m]
                pack_id[row], pack_shard[row], pack_pos[row] = f"{k:08d}", k // p.packs_per_shard, j
        return {"drop_reason": reasons, "pack_id": pack_id, "pack_shard": pack_shard, "pack_pos": pack_pos}


def pack_summary(packs: dict[str, list[int]], max_len: int, packs_per_step: int | None) -> dict:
    """Fill figures of the written packs (stats.json `pack`)."""
    lengths = [sum(v) for v in packs.values()]
    if not lengths:
        return {"packs": 0}
    fill = np.array(lengths) / max_len
    total = int(sum(lengths))
    out = {
        "packs": len(lengths), "tokens": total, "max_len": max_len, "fill": round(total / (len(lengths) * max_len), 6),
        "lower_bound_packs": -(-total // max_len),
        "fill_quantiles": {q: round(float(np.quantile(fill, float(q[1:]) / 100)), 4)
                           for q in ("p0", "p5", "p50", "p95", "p100")},
    }
    if packs_per_step:
        costs = [pack_cost(list(range(len(v))), v) for v in packs.values()]
        groups = [costs[i:i + packs_per_step] for i in range(0, len(costs) - packs_per_step + 1, packs_per_step)]
        ratios = [max(g) / (sum(g) / len(g)) for g in groups if sum(g) > 0]
        out["balance_max_over_mean"] = round(max(ratios), 4) if ratios else None
    return out
