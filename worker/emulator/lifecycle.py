"""Batch state advancement and per-line outcome decisions.

Batches advance lazily: nothing runs in the background; every read of a batch (get or
list) moves it forward by as many phases as ``state_seconds`` allows since it entered its
current phase. With ``state_seconds=0`` the first read takes a batch straight to its
terminal phase, and the creation response still shows the first phase.

When a batch reaches a terminal phase the provider's *finisher* generates its result file(s)
and inline results, line by line, once, under the batch's own lock.
"""

from __future__ import annotations

import json
import operator
import os
import random
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from worker.emulator.content import Answer, unit_fraction
from worker.emulator.store import BatchRecord, BatchSettings, FileRecord, Store, new_id, now

T = TypeVar("T")

_SHUFFLE_BLOCK = 1000
_WRITE_BLOCK = 1000  # result lines joined into one write


def _next_phase(batch: BatchRecord) -> str:
    outcome = batch.settings.batch_outcome
    if batch.phase == "cancelling":
        return "cancelled"
    if batch.phase == "queued":
        if batch.validation_errors or outcome == "failed":
            return "failed"
    if batch.phase == "running" and outcome == "expired":
        return "expired"
    if batch.phase == "running" and outcome == "cancelled":
        # An operator's cancel while the batch runs. Only providers with a cancelling
        # phase (OpenAI, Mistral) pass through it.
        return "cancelled" if batch.provider == "gemini" else "cancelling"
    phases = batch.forward_phases
    if batch.phase in phases:
        i = phases.index(batch.phase)
        if i + 1 < len(phases):
            return phases[i + 1]
    return "completed"


def enter_phase(store: Store, batch: BatchRecord, phase: str, at: float) -> None:
    """Move ``batch`` to ``phase`` (caller holds ``batch.lock``); finish it if terminal."""
    batch.phase = phase
    batch.phase_since = at
    batch.entered[phase] = at
    if batch.terminal:
        batch.finisher(batch, phase)
        with store.lock:
            for entry in batch.entries:
                if entry["outcome"] == "pending":
                    entry["outcome"] = {"completed": "succeeded"}.get(phase, phase)


def advance(store: Store, batch: BatchRecord) -> None:
    """Advance ``batch`` as far as the elapsed time allows."""
    cfg = store.config
    t = now()
    with batch.lock:
        while not batch.terminal:
            s = cfg.state_seconds
            if batch.phase == "cancelling" and cfg.cancel_seconds is not None:
                s = cfg.cancel_seconds
            if t - batch.phase_since < s:
                break
            # Timestamps accrue from the previous phase so slow polling sees a realistic
            # history; with s=0 every phase is entered "now".
            enter_phase(store, batch, _next_phase(batch), batch.phase_since + s if s else t)


def request_cancel(store: Store, batch: BatchRecord, immediate: bool = False) -> None:
    """Cancel a non-terminal batch (``immediate``: skip the cancelling phase)."""
    advance(store, batch)
    with batch.lock:
        if batch.terminal or batch.phase == "cancelling":
            return
        enter_phase(store, batch, "cancelled" if immediate else "cancelling", now())


# --------------------------------------------------------------------------- line outcomes


def line_outcome(
    settings: BatchSettings,
    terminal: str,
    custom_id: str,
    index: int,
    partial_on_expiry: bool = True,
) -> str:
    """What happened to one line: succeeded / failed / expired / cancelled."""
    if terminal == "failed":
        return "failed"
    if terminal == "cancelled":
        # Lines finished before the cancel keep their results (OpenAI: "partial results
        # (if any) available in the output file"); the share is cancel_done_share.
        if unit_fraction(settings.seed, "cancel-done", custom_id) >= settings.cancel_done_share:
            return "cancelled"
    if terminal == "expired" and (not partial_on_expiry or index % 2 == 1):
        # Expiry leaves half of the work done (every other line) where the provider keeps
        # partial results; Gemini documents no results at all for EXPIRED.
        return "expired"
    if settings.line_failure_rate and (
        unit_fraction(settings.seed, "line-failure", custom_id) < settings.line_failure_rate
    ):
        return "failed"
    return "succeeded"


def is_malformed(settings: BatchSettings, custom_id: str) -> bool:
    return bool(settings.malformed_line_rate) and (
        unit_fraction(settings.seed, "malformed", custom_id) < settings.malformed_line_rate
    )


def violates(settings: BatchSettings, custom_id: str) -> bool:
    return bool(settings.schema_violation_rate) and (
        unit_fraction(settings.seed, "violation", custom_id) < settings.schema_violation_rate
    )


def malformed_text(line: str) -> str:
    """A result line cut in half: clearly not JSON, still carries recognisable text."""
    return line[: max(1, len(line) // 2)] + "<<truncated"


def record_outcomes(store: Store, batch: BatchRecord, outcomes: dict[int, str]) -> None:
    """Set the per-line outcome of ``batch.entries`` by line index."""
    with store.lock:
        for i, outcome in outcomes.items():
            if 0 <= i < len(batch.entries):
                batch.entries[i]["outcome"] = outcome


# --------------------------------------------------------------------------- files


def iter_jsonl(path: str) -> Iterator[tuple[int, str]]:
    """(index, raw line) for each non-blank line of a file, streamed."""
    i = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            if raw.strip():
                yield i, raw
                i += 1


def shuffled_blocks(items: Iterable[T], seed: int) -> Iterator[T]:
    """Re-order a stream in blocks of 1000 items, deterministically: output order differs
    from input order (as real providers' does) while memory stays bounded."""
    rng = random.Random(seed)
    block: list[T] = []
    for item in items:
        block.append(item)
        if len(block) >= _SHUFFLE_BLOCK:
            rng.shuffle(block)
            yield from block
            block = []
    rng.shuffle(block)
    yield from block


# --------------------------------------------------------------------------- prepared lines


class PreparedLines:
    """What generating each chat line's result needs, computed while the input file is
    read at creation, so that file is parsed once. Per line it keeps a few numbers in
    compact arrays (about 20 bytes), not the request: the prompt only matters through its
    seed and token count, and the response format is one of a few distinct ones. Results
    then no longer depend on the input file still existing either."""

    def __init__(self) -> None:
        self.seeds = array("Q")
        self.tokens_in = array("I")
        self.answer_of = array("i")  # index into ``answers``; -1: the line was unreadable
        self.model_of = array("i")  # index into ``models``
        self.answers: list[Answer] = []
        self.models: list[str] = []
        self._answer_index: dict[str, int] = {}
        self._model_index: dict[str, int] = {}
        self._last = -1  # the previous line's answer

    def __len__(self) -> int:
        return len(self.seeds)

    def add(
        self,
        seed: int,
        tokens_in: int,
        model: str,
        wants_json: bool,
        schema: dict[str, Any] | None,
    ) -> None:
        answer = self._last
        # Every line of a batch usually asks for the same format: compare with the previous
        # line's (dict equality, no encoding) before looking it up by its canonical JSON.
        if answer < 0 or not self.answers[answer].matches(wants_json, schema):
            key = f"{int(wants_json)}{json.dumps(schema, sort_keys=True, default=repr)}"
            found = self._answer_index.get(key)
            if found is None:
                found = self._answer_index[key] = len(self.answers)
                self.answers.append(Answer(wants_json, schema))
            answer = self._last = found
        m = self._model_index.get(model)
        if m is None:
            m = self._model_index[model] = len(self.models)
            self.models.append(model)
        self.seeds.append(seed)
        self.tokens_in.append(tokens_in)
        self.answer_of.append(answer)
        self.model_of.append(m)

    def add_unreadable(self) -> None:
        """A line whose request cannot be answered (its result is a failed line)."""
        self.seeds.append(0)
        self.tokens_in.append(0)
        self.answer_of.append(-1)
        self.model_of.append(-1)


# --------------------------------------------------------------------------- result lines

_SLOT = re.compile(r'"@@(\w+)@@"')


def slot(name: str) -> str:
    """A placeholder for :class:`LineTemplate`: stands for one whole JSON value."""
    return f"@@{name}@@"


class LineTemplate:
    """One result line's JSON with holes, encoded once: each line only fills in its own
    values (already JSON-encoded text). Encoding the whole nested record per line was the
    largest single cost of writing results. Renders exactly what ``json.dumps(record,
    ensure_ascii=False, separators=(",", ":"))`` gives for the filled-in record."""

    def __init__(self, sample: Any) -> None:
        encoded = json.dumps(sample, ensure_ascii=False, separators=(",", ":"))
        parts = _SLOT.split(encoded)
        names = parts[1::2]
        self.slots = frozenset(names)
        # %-formatting with a tuple: several times faster than str.format(**values) on a
        # long template.
        self._format = "%s".join(p.replace("%", "%%") for p in parts[0::2])
        pick = operator.itemgetter(*names)
        self._pick: Callable[[dict[str, str]], Any] = (
            pick if len(names) > 1 else lambda values: (pick(values),)
        )

    def render(self, **values: str) -> str:
        line: str = self._format % self._pick(values)
        return line


class ResultFile:
    """A result file being written line by line, registered in the store on ``close``."""

    def __init__(
        self,
        store: Store,
        provider: str,
        file_id: str,
        filename: str,
        purpose: str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.provider = provider
        self.id = file_id
        self.filename = filename
        self.purpose = purpose
        self.meta = meta or {}
        self.path = store.new_file_path(file_id)
        self.lines = 0
        self._f: IO[str] = open(self.path, "w", encoding="utf-8", buffering=1 << 20)
        self._pending: list[str] = []

    def write_obj(self, obj: Any) -> None:
        self.write_line(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    def write_raw(self, line: str) -> None:
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """One line of text (without its newline); written in blocks of lines."""
        pending = self._pending
        pending.append(line)
        if len(pending) >= _WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._pending.append("")
            self._f.write("\n".join(self._pending))
            self.lines += len(self._pending) - 1
            self._pending = []

    def close(self, keep: bool = True) -> str | None:
        """Finish the file; returns its id, or None when empty / not kept (file removed)."""
        self._flush()
        self._f.close()
        if not keep or self.lines == 0:
            os.unlink(self.path)
            return None
        size = os.path.getsize(self.path)
        self.meta.setdefault("num_lines", self.lines)
        self.store.add_file(
            FileRecord(
                self.id,
                self.provider,
                self.filename,
                self.purpose,
                self.path,
                size,
                now(),
                self.meta,
            ),
            uploaded=False,
        )
        return self.id


def new_result_file(
    store: Store,
    provider: str,
    prefix: str,
    filename: str,
    purpose: str,
    meta: dict[str, Any] | None = None,
) -> ResultFile:
    return ResultFile(store, provider, new_id(prefix), filename, purpose, meta)
