"""Backlog drain under provider limits (issue 12, build 8).

The first user's real backlog is 49,000 questions x 3 batch models + a summary, against an
OpenAI enqueued-token limit of 2,000,000 per model (tier 1) and Gemini's batch quotas, with
a 24 h batch turnaround. Here everything is scaled so one run takes a few minutes on two
shared cores: DRAIN_QUESTIONS questions (default 2,000 = 1/24.5 of the backlog), each
token limit scaled by the same factor (so the backlog is the same number of queue-fulls:
the figure that decides drain time), the Gemini concurrent-batch cap scaled likewise, and
the batch turnaround scaled from 24 h to seconds (emulator state_seconds).

Figures (medians over DRAIN_RUNS runs, default 1):
- drain time of the worker (one `python -m worker run` process) from insert to every
  question settled, against the quota-bound ideal: for each batch model, the prompt tokens
  the emulator billed for it in this run / its enqueued-token limit x the measured batch
  turnaround; the largest over models (sequential queue-fulls cannot overlap);
- questions failed because of limits (target 0), duplicate paid requests (paid_twice,
  target 0);
- the same for the old system's strategy simulated on the same emulator through the same
  SDK adapters: a fixed batch_size (40) per run, one batch per model per run, runs back to
  back, a failed batch's questions resubmitted at once and charged an attempt, a question
  failed after max_attempts (3).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.bench.common import (
    ENABLED,
    MODELS,
    emit,
    emulator_env,
    emulator_process,
    fresh_database,
    median,
    set_settings,
    worker_env,
)
from tests.fixtures.pipeline import submitted_twice
from tests.fixtures.worker_proc import WorkerProcess

N = int(os.environ.get("DRAIN_QUESTIONS", "2000"))
RUNS = int(os.environ.get("DRAIN_RUNS", "1"))
REAL_BACKLOG = 49_000
SCALE = N / REAL_BACKLOG
STATE_SECONDS = float(os.environ.get("DRAIN_STATE_SECONDS", "2.0"))
TIMEOUT = float(os.environ.get("DRAIN_TIMEOUT", "600"))
OLD_BATCH_SIZE = 40
OLD_MAX_ATTEMPTS = 3

OPENAI_LIMIT = int(2_000_000 * SCALE)  # gpt-4.1-mini / gpt-4o-mini tier 1
GEMINI_LIMIT = int(3_000_000 * SCALE)  # gemini-2.5-flash tier 1
GEMINI_CONCURRENT = max(2, round(100 * SCALE))

LIMITED = {("openai", "gpt-4.1-mini"): OPENAI_LIMIT, ("gemini", "gemini-2.5-flash"): GEMINI_LIMIT}

INSERT = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
    " correct_answer, subject, ai_commentary_status)"
    " SELECT 'Frage ' || g || ': Welches Organ produziert Insulin, und warum nicht die Leber?',"
    " 'Leber', 'Pankreas', 'Milz', 'Niere', 'Herz', 'B', 'Physiologie', 'pending'"
    " FROM generate_series(1, %s) g"
)
# Polling scaled with the turnaround: in production POLL_MAX_SECONDS (300 s) is 0.3% of a
# 24 h turnaround; 0.3 s is ~5% of the scaled one (shorter would cost CPU, not realism).
WORKER_EXTRA = {
    "POLL_MIN_SECONDS": "0.1",
    "POLL_MAX_SECONDS": "0.3",
    "FETCH_JOB_POLLING_INTERVAL": "0.2",
    "TICK_SECONDS": "2",
    "TOKEN_LIMIT_HOLD_SECONDS": str(STATE_SECONDS),
    "LOG_LEVEL": "WARNING",
}
EMULATOR_LIMITS = {
    "state_seconds": STATE_SECONDS,
    "openai_enqueued_tokens_per_model": OPENAI_LIMIT,
    "openai_failed_tokens_hold_seconds": STATE_SECONDS,
    "gemini_enqueued_tokens_per_model": GEMINI_LIMIT,
    "gemini_max_concurrent_batches": GEMINI_CONCURRENT,
}


def configure(base: str, **fields: Any) -> None:
    httpx.post(f"{base}/_emulator/reset", timeout=10).raise_for_status()
    httpx.post(f"{base}/_emulator/config", json=fields, timeout=10).raise_for_status()


def stats(base: str) -> dict[str, Any]:
    return httpx.get(f"{base}/_emulator/stats", timeout=60).json()  # type: ignore[no-any-return]


def billed_prompt_tokens(st: dict[str, Any]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for provider, s in st.items():
        for model, modes in s.get("usage", {}).items():
            out[(provider, model)] = int(modes["batch"]["input_tokens"])
    return out


def ideal_seconds(st: dict[str, Any], turnaround: float) -> tuple[float, str]:
    """Quota-bound ideal: the slowest limited model's tokens / limit x turnaround."""
    best, which = 0.0, ""
    for key, tokens in billed_prompt_tokens(st).items():
        limit = LIMITED.get(key)
        if limit:
            t = tokens / limit * turnaround
            if t > best:
                best, which = t, f"{key[1]}: {tokens:,} tokens / {limit:,}"
    return best, which


async def measure_turnaround(base: str) -> float:
    """Seconds from create to a terminal status of one small OpenAI batch (tight polling)."""
    from tests.integration.test_adapters import requests
    from worker.providers.openai import OpenAIBatch

    p = OpenAIBatch("bench", f"{base}/openai/v1", 10.0)
    t0 = time.monotonic()
    sub = await p.submit("gpt-4.1-mini", requests(2), intent_id="turnaround")
    for _ in range(10_000):
        if (await p.status(sub.batch_id)).state.terminal:
            break
        await asyncio.sleep(0.02)
    took = time.monotonic() - t0
    await p.aclose()
    return took


# ----------------------------------------------------------------------- the worker


def run_worker(base: str, logdir: Path) -> dict[str, Any]:
    configure(base, **EMULATOR_LIMITS)
    with fresh_database("drain") as url:
        set_settings(
            url,
            models=MODELS,
            models_enabled=ENABLED,
            batch_size=OLD_BATCH_SIZE,
            processing_delay_minutes=0,
        )
        with psycopg.connect(url, autocommit=True) as conn:
            # What a person enters from the limits page of their account (scaled).
            for (provider, model), limit in LIMITED.items():
                conn.execute(
                    "UPDATE worker_batch_limits SET enqueued_tokens = %s,"
                    " live_batches = CASE WHEN provider = 'gemini' THEN %s END"
                    " WHERE provider = %s AND model = %s",
                    (limit, GEMINI_CONCURRENT, provider, model),
                )
            conn.execute(INSERT, (N,))
        env = worker_env(url, **emulator_env(base), **WORKER_EXTRA)
        log = logdir / "drain-worker.log"
        started = time.monotonic()
        worker = WorkerProcess(env, log)
        try:
            while time.monotonic() - started < TIMEOUT:
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FILTER (WHERE ai_commentary_status IN"
                        " ('pending', 'processing')) FROM questions"
                    ).fetchone()
                if row and row[0] == 0:
                    break
                time.sleep(0.5)
            took = time.monotonic() - started
        finally:
            worker.terminate(30)
        with psycopg.connect(url, autocommit=True) as conn:
            counts = dict(
                conn.execute(
                    "SELECT ai_commentary_status, count(*) FROM questions GROUP BY 1"
                ).fetchall()
            )
            limit_failed = conn.execute(
                "SELECT count(*) FROM ai_commentary_batch_jobs WHERE failure_cause = 'limit'"
            ).fetchone()
            batches = conn.execute("SELECT count(*) FROM ai_commentary_batch_jobs").fetchone()
            est = conn.execute(
                "SELECT sum(estimated_tokens), sum(input_tokens) FROM ai_commentary_batch_jobs"
                " WHERE state = 'ingested' AND model_name = 'gpt-4.1-mini'"
            ).fetchone()
    st = stats(base)
    return {
        "seconds": took,
        "completed": int(counts.get("completed", 0)),
        "failed": int(counts.get("failed", 0)),
        "open": N - int(counts.get("completed", 0)) - int(counts.get("failed", 0)),
        "limit_failed_batches": int(limit_failed[0]) if limit_failed else 0,
        "batches": int(batches[0]) if batches else 0,
        "paid_twice": len(submitted_twice(st, succeeded_only=True)),
        "estimate_vs_billed": (float(est[0]) / float(est[1])) if est and est[1] else None,
        "stats": st,
    }


# ------------------------------------------------------------------ the old strategy


@dataclass
class OldState:
    attempts: dict[tuple[int, str], int] = field(default_factory=dict)
    done: dict[int, set[str]] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    failed_for_limits: set[int] = field(default_factory=set)
    queues: dict[str, list[int]] = field(default_factory=dict)


async def run_old(base: str) -> dict[str, Any]:
    """The old system's strategy on the same emulator: 40 questions per run, one batch per
    model per run, runs back to back, failed batches resubmitted at once (an attempt
    each), a question failed after 3 attempts. Summaries follow a question's 3 comments."""
    from worker.commentary import prompts
    from worker.commentary.schemas import COMMENTARY_SCHEMA, SUMMARY_SCHEMA
    from worker.providers.base import ChatRequest
    from worker.providers.gemini import GeminiBatch
    from worker.providers.mistral import MistralBatch
    from worker.providers.openai import OpenAIBatch

    configure(base, **EMULATOR_LIMITS)
    adapters: dict[str, Any] = {
        "chatgpt": OpenAIBatch("bench", f"{base}/openai/v1", 30.0),
        "gemini": GeminiBatch("bench", f"{base}/gemini", 30.0),
        "mistral": MistralBatch("bench", f"{base}/mistral", 30.0),
    }
    adapters["summary"] = adapters["chatgpt"]
    model_of = {k: v["model"] for k, v in MODELS.items()} | {"summary": "gpt-4.1-mini"}

    def request(i: int, key: str) -> ChatRequest:
        q = prompts.QuestionText(
            question=f"Frage {i}: Welches Organ produziert Insulin, und warum nicht die Leber?",
            option_a="Leber",
            option_b="Pankreas",
            option_c="Milz",
            option_d="Niere",
            option_e="Herz",
            subject="Physiologie",
            correct_answer="B",
        )
        if key == "summary":
            return ChatRequest(
                custom_id=f"{i}:summary",
                system_prompt=prompts.SUMMARY_SYSTEM_DE_V1,
                user_prompt=prompts.summary_prompt(q, {}),
                schema_name="summary",
                json_schema=SUMMARY_SCHEMA,
            )
        return ChatRequest(
            custom_id=f"{i}:{key}",
            system_prompt=prompts.SYSTEM_DE_V1,
            user_prompt=prompts.user_prompt(q, None),
            schema_name="commentary",
            json_schema=COMMENTARY_SCHEMA,
        )

    s = OldState(queues={k: list(range(N)) if k != "summary" else [] for k in model_of})
    inflight: list[tuple[str, str, list[int]]] = []
    started = time.monotonic()
    n_batches = 0

    def settle(i: int, key: str, ok: bool, limit: bool) -> None:
        if i in s.failed:
            return
        if ok:
            s.done.setdefault(i, set()).add(key)
            if key != "summary" and s.done[i] >= {"chatgpt", "gemini", "mistral"}:
                s.queues["summary"].append(i)
            return
        a = s.attempts[(i, key)] = s.attempts.get((i, key), 0) + 1
        if a >= OLD_MAX_ATTEMPTS:
            s.failed.add(i)
            if limit:
                s.failed_for_limits.add(i)
        else:
            s.queues[key].append(i)  # resubmitted at once

    def finished() -> bool:
        return all(i in s.failed or "summary" in s.done.get(i, set()) for i in range(N))

    while not finished() and time.monotonic() - started < TIMEOUT:
        # One run: a batch of up to 40 per model, back to back.
        for key, queue in s.queues.items():
            take = [i for i in queue[:OLD_BATCH_SIZE] if i not in s.failed]
            del queue[:OLD_BATCH_SIZE]
            if not take:
                continue
            try:
                sub = await adapters[key].submit(
                    model_of[key], [request(i, key) for i in take], intent_id=f"old-{n_batches}"
                )
                n_batches += 1
                inflight.append((key, sub.batch_id, take))
            except Exception:
                for i in take:  # a refused create (Gemini 429) is a failed attempt too
                    settle(i, key, False, True)
        still: list[tuple[str, str, list[int]]] = []
        for key, batch_id, ids in inflight:
            st = await adapters[key].status(batch_id)
            if not st.state.terminal:
                still.append((key, batch_id, ids))
                continue
            ok_ids: set[int] = set()
            if st.state.value == "completed":
                async for line in adapters[key].results(st):
                    if line.ok:
                        ok_ids.add(int(line.custom_id.split(":")[0]))
            for i in ids:
                settle(i, key, i in ok_ids, st.state.value == "failed")
        inflight = still
        await asyncio.sleep(0.05)
    took = time.monotonic() - started
    for a in adapters.values():
        if hasattr(a, "aclose"):
            await a.aclose()
    st_all = stats(base)
    completed = sum(1 for i in range(N) if "summary" in s.done.get(i, set()))
    return {
        "seconds": took,
        "completed": completed,
        "failed": len(s.failed),
        "failed_for_limits": len(s.failed_for_limits),
        "open": N - completed - len(s.failed),
        "batches": n_batches,
        "paid_twice": len(submitted_twice(st_all, succeeded_only=True)),
    }


def main() -> int:
    logdir = Path(os.environ.get("DRAIN_LOG_DIR", "/tmp/aiw-drain"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(
        f"drain: {N} questions (1/{1 / SCALE:.1f} of {REAL_BACKLOG:,}), OpenAI limit "
        f"{OPENAI_LIMIT:,} tokens/model, Gemini {GEMINI_LIMIT:,} tokens/model and "
        f"{GEMINI_CONCURRENT} concurrent batches, state_seconds {STATE_SECONDS}",
        flush=True,
    )
    new_runs: list[dict[str, Any]] = []
    old_runs: list[dict[str, Any]] = []
    ideals: list[float] = []
    with emulator_process("--state-seconds", str(STATE_SECONDS)) as base:
        configure(base, **EMULATOR_LIMITS)
        turnaround = asyncio.run(measure_turnaround(base))
        print(f"  batch turnaround {turnaround:.2f}s", flush=True)
        for _ in range(RUNS):
            r = run_worker(base, logdir)
            ideal, which = ideal_seconds(r.pop("stats"), turnaround)
            ideals.append(ideal)
            new_runs.append(r)
            print(f"  worker: {r}; ideal {ideal:.1f}s ({which})", flush=True)
            o = asyncio.run(run_old(base))
            old_runs.append(o)
            print(f"  old strategy: {o}", flush=True)
    t_new = median([r["seconds"] for r in new_runs])
    t_old = median([r["seconds"] for r in old_runs])
    ideal = median(ideals)
    emit(
        f"drain {N} questions x 3 models + summary under limits: ideal / drain time",
        ideal / t_new,
        "share of ideal",
        target=">= 0.85",
    )
    emit(
        "drain: worker drain time",
        t_new,
        "s",
        baseline=ideal,
        baseline_label="quota ideal",
        better="lower",
    )
    emit(
        "drain: questions failed because of limits (worker)",
        median([r["failed"] for r in new_runs]),
        "questions",
        baseline=median([r["failed_for_limits"] for r in old_runs]),
        baseline_label="old strategy",
        target="0",
        better="lower",
    )
    emit(
        "drain: duplicate paid requests (worker)",
        median([r["paid_twice"] for r in new_runs]),
        "requests",
        baseline=median([r["paid_twice"] for r in old_runs]),
        baseline_label="old strategy",
        target="0",
        better="lower",
    )
    emit(
        "drain: old strategy time to settle (completed + failed)",
        t_old,
        "s",
        baseline=t_new,
        baseline_label="worker",
        better="lower",
    )
    emit(
        "drain: old strategy questions completed",
        median([r["completed"] for r in old_runs]),
        "questions",
        baseline=median([r["completed"] for r in new_runs]),
        baseline_label="worker",
    )
    bad = any(r["failed"] or r["open"] or r["paid_twice"] for r in new_runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
