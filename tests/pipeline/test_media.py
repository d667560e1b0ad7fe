"""Image bytes by reference (pipeline/media.py): work files leave out the bytes the input holds, and the next
step puts the same bytes back from the input."""

from __future__ import annotations

import pytest

from pipeline import media


def read_rows() -> list[dict]:
    """What the reader gives for a partition: fresh bytes objects on every call, as a real read does."""
    return [{"id": "a", "images": [bytes([1]) * 100, bytes([2]) * 50]}, {"id": "b", "images": [bytes([3]) * 70]},
            {"id": "c", "images": []}]


def test_rows_keep_indices_instead_of_their_root_records_bytes():
    rows = read_rows()
    roots = media.mark_roots(rows)
    child = {**rows[0], "id": "a#0", "images": [rows[0]["images"][1]]}  # a sample with the second image
    copied = {**rows[1], "id": "b#0", "images": [bytes(rows[1]["images"][0])]}  # equal bytes, another object
    made = {**rows[1], "id": "b#1", "images": [b"\x89PNG made by a stage"]}  # bytes no input holds
    text_only = {**rows[0], "id": "a#1", "images": []}
    rows += [child, copied, made, text_only]
    saved = media.to_refs(rows, roots)
    assert saved == 100 + 50 + 70 + 50 + 70
    assert [r[media.REFS] for r in rows] == [[0, 1], [0], None, [1], [0], None, None]
    assert made["images"] == [b"\x89PNG made by a stage"]  # kept in the work file
    assert all(r["images"] == [] for r in rows if r[media.REFS] is not None)

    # the next step: the same bytes back, from a second read of the partition
    restored = media.restore(rows, read_rows, "p00000")
    assert set(restored) == {"a", "b", "c"}
    assert child["images"] == [bytes([2]) * 50] and rows[0]["images"] == [bytes([1]) * 100, bytes([2]) * 50]
    assert copied["images"] == [bytes([3]) * 70] and text_only["images"] == []
    # after a restore the objects are the read's own: the next work file again leaves them out
    assert media.to_refs(rows, restored) == saved


def test_no_read_when_no_kept_row_needs_bytes():
    rows = read_rows()
    media.to_refs(rows, media.mark_roots(rows))
    for r in rows:
        r["drop_stage"] = "dedup"

    def fail():
        raise AssertionError("read again though no kept row needs bytes")

    assert media.restore(rows, fail, "p00000") == {}


def test_a_changed_input_is_one_clear_error():
    rows = read_rows()
    media.to_refs(rows, media.mark_roots(rows))
    with pytest.raises(RuntimeError, match="input of partition p00007 changed while the job ran"):
        media.restore(rows, lambda: [{"id": "a", "images": [b"x"]}], "p00007")


def test_unreadable_again_readers_keep_their_bytes():
    from pipeline.readers import READERS

    assert not media.rereadable(READERS["video"]) and media.rereadable(READERS["webdataset"])
