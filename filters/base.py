"""The stage contract: score + decide.

A stage never counts, times, reads storage or catches errors for a whole batch; the runner in
`pipeline/` does that (DESIGN.md, Stages). A stage sees a *batch*: a dict of column name -> Python
list, all lists the same length, holding only rows that are still kept. JSON columns (`meta`,
`annotations`, `messages`) arrive parsed (dicts / lists) and are serialised again by the runner.

Kinds:
- ``map``: ``score(batch) -> dict of columns`` (new score columns, or replaced ``images``/``meta``), then
  ``decide(batch_with_scores) -> list[str | None]`` (a snake_case drop reason per row, ``None`` = keep).
- ``global``: ``score`` per batch like a map stage; then ``decide_global(table)`` once over the whole
  dataset, where ``table`` holds only ``id`` and the score columns (never image bytes) of the rows kept so
  far. It returns a dict of columns aligned with ``table``: ``drop_reason`` and any extra columns
  (``duplicate_of`` ...), which the runner joins back by id.
- ``expand``: ``expand(row) -> list[dict] | str``: the children of one record (each a dict of fields to
  set on a copy of the parent), or a drop reason when it yields none. The runner gives children
  ``parent_id`` and their own ids.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

Batch = dict[str, list[Any]]
StageKind = Literal["map", "global", "expand"]


class Params(BaseModel):
    """Base of every stage's parameters: typed, defaulted, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    """Base class of all stages. Subclasses set ``kind``, ``Params`` and implement the methods of their kind.

    ``num_cpus`` / ``num_gpus`` are the resources one copy of the stage needs; a stage with
    ``holds_model = True`` runs in a Ray actor pool and ``setup()`` runs once per actor (load weights there,
    never in ``__init__``). ``batch_size`` is the number of rows handed to ``score`` at once.
    ``decision_params`` names the parameters that change only the decision, not the scores: a model stage's
    scores from an earlier job whose other parameters were the same are reused (`vlcurate regen-sft`).
    Columns a stage returns whose names start with ``_`` are scratch: used by ``decide``, never stored.
    """

    kind: ClassVar[StageKind] = "map"
    Params: ClassVar[type[Params]] = Params
    holds_model: ClassVar[bool] = False
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 64
    decision_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params | None = None, name: str | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.name = name or type(self).__name__

    def check(self) -> None:
        """Validate things the parameters name (files exist...) before the job starts.

        Raise ``ValueError`` with a one-line message naming the parameter; the runner prefixes the stage key.
        """

    def setup(self) -> None:
        """Load models or other heavy state; called once per worker/actor before the first batch."""

    def score(self, batch: Batch) -> Batch:
        return {}

    def decide(self, batch: Batch) -> list[str | None]:
        return [None] * len(batch["id"])

    def decide_global(self, table: Batch) -> Batch:
        """Global stages implement this (the one decision over the whole dataset)."""
        raise NotImplementedError(f"{type(self).__name__} (kind {self.kind!r}) has no decide_global: "
                                  "a global stage must implement it")

    def expand(self, row: dict[str, Any]) -> list[dict[str, Any]] | str:
        """Expand stages implement this (one record -> its samples)."""
        raise NotImplementedError(f"{type(self).__name__} (kind {self.kind!r}) has no expand: "
                                  "an expand stage must implement it")

    def score_columns(self) -> list[str]:
        """Names of the score columns ``score`` adds (read by global decisions and the manifest)."""
        return []
