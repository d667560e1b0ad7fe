"""`vlcurate inspect OUT --candidates --id ID` (pipeline/candidates.py `show`) on a hand-made candidates.parquet:
one prompt's candidates by a prompt or a candidate id, with verdict, answer and the visual P(yes) when asked."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.candidates import CANDIDATES, show


def test_show_one_prompt_with_verdicts_and_visual_score(tmp_path, capsys):
    rows = [
        {"id": "c0", "parent_id": "p", "cot_sample": 0, "prompt": "Which?\nA. x\nB. y", "cot_text": "y it is.\nAnswer: B",
         "gold_answer": "B", "cot_answer": "B", "cot_verdict": "pass", "cot_reason": None, "cot_selected": True,
         "drop_reason": None, "cot_tokens": 5, "cot_finish_reason": "stop", "relevance_p_yes": 0.9},
        {"id": "c1", "parent_id": "p", "cot_sample": 1, "prompt": "Which?\nA. x\nB. y",
         "cot_text": "A giraffe.\nAnswer: B", "gold_answer": "B", "cot_answer": "B", "cot_verdict": "fail",
         "cot_reason": "visual_inconsistent", "cot_selected": False, "drop_reason": "visual_inconsistent",
         "cot_tokens": 3, "cot_finish_reason": "stop", "relevance_p_yes": 0.1},
        {"id": "d0", "parent_id": "q", "cot_sample": 0, "prompt": "Other?", "cot_text": "Answer: 1",
         "gold_answer": "1", "cot_answer": "1", "cot_verdict": "pass", "cot_reason": None, "cot_selected": True,
         "drop_reason": None, "cot_tokens": 2, "cot_finish_reason": "stop", "relevance_p_yes": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / CANDIDATES)
    out = io.StringIO()
    assert show(str(tmp_path), "c1", file=out) == 0  # a candidate id shows its whole prompt
    text = out.getvalue()
    assert text.startswith("prompt p: 2 candidate(s); gold answer: 'B'\nWhich?\nA. x\nB. y\n")
    assert "[0] c0  pass (ok) -> SELECTED  answer='B' tokens=5 finish=stop p_yes=0.90" in text
    assert "[1] c1  fail (visual_inconsistent) -> visual_inconsistent" in text and "p_yes=0.10" in text
    assert "d0" not in text
    out = io.StringIO()
    assert show(str(tmp_path), "q", file=out) == 0 and "p_yes" not in out.getvalue()  # text-only: not asked
    assert show(str(tmp_path), "nope") == 2 and "no candidate or prompt with id nope" in capsys.readouterr().err
