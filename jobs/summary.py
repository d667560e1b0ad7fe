"""The short summary a job prints when it ends."""

from __future__ import annotations

from typing import Any


def print_summary(out: str, stats: dict[str, Any]) -> None:
    print(f"\nvlcurate: done in {stats['wall_seconds']:.1f} s -> {out}")
    print(f"  records in: {stats['records_in']}   kept: {stats['kept']}   rejected: {stats['rejected']}"
          + (f"   (resumed {stats['partitions_resumed']} partition-steps)" if stats["partitions_resumed"] else ""))
    for reason, n in stats["rejected_by_reason"].items():
        print(f"    {n:6d}  {reason}")
    for key, st in stats["stages"].items():
        if st:
            print(f"  {key:<14} in {st.get('in', 0):6d}  kept {st.get('kept', 0):6d}  {st.get('seconds', 0):7.2f} s")
    print(f"  look: vlcurate inspect {out}   |   vlcurate inspect {out} --rejected")
