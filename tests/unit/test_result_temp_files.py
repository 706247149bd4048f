"""A downloaded result file is deleted as soon as ingesting it stops, also when ingest fails
half-way (it used to wait for the garbage collector, and leaked /tmp/aiw-dl-*.jsonl files
when that never came)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from worker.commentary import poll
from worker.commentary.rows import BatchJob
from worker.providers.base import BatchState, BatchStatus, ResultLine
from worker.providers.jsonl import temp_path


def exists(path: str) -> bool:
    return os.path.exists(path)


class Boom(Exception):
    pass


async def test_temp_file_is_removed_when_ingest_fails_half_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths: list[str] = []

    class Provider:
        async def results(self, status: BatchStatus) -> AsyncIterator[ResultLine]:
            with temp_path() as path:
                paths.append(path)
                for i in range(10):
                    yield ResultLine(custom_id=f"q{i}", ok=True, text="{}")

    class Registry:
        def batch(self, name: str) -> Provider:
            return Provider()

    async def ingest_one_then_fail(*args: Any, lines: AsyncIterator[ResultLine], **kw: Any) -> Any:
        async for _line in lines:
            assert exists(paths[0])  # the download is there while it is read
            raise Boom("the database went away mid-ingest")

    monkeypatch.setattr(poll, "providers", Registry)
    monkeypatch.setattr(poll, "ingest_lines", ingest_one_then_fail)
    status = BatchStatus("b1", BatchState.COMPLETED, "completed", output_file_id="f1")
    job = BatchJob(
        id=uuid.UUID("00000000-0000-0000-0000-000000000001"),
        provider="openai",
        model_key="chatgpt",
        model_name="m",
        batch_id="b1",
        state="in_flight",
        status="completed",
        poll_count=0,
        created_at=None,
    )
    with pytest.raises(Boom):
        await poll.finish(None, None, job, status)  # type: ignore[arg-type]
    assert paths and not exists(paths[0]), "the temp file outlived the failed ingest"
