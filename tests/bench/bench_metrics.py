"""Scrape cost of /metrics on a large realtime history: every scrape reading the whole
ai_jobs table (the first scrape of a process does exactly that) against later scrapes that
read only the rows finished since the fold margin (worker.ops.metrics.RangeTotals).

    .venv/bin/python -m tests.bench.bench_metrics [--rows 200000] [--scrapes 7]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import psycopg

from tests.bench.common import emit, fresh_database, median
from worker.ops import metrics


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--scrapes", type=int, default=7)
    args = ap.parse_args()
    with fresh_database("metrics") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE ai_jobs DISABLE TRIGGER USER")  # bulk history
            conn.execute(
                "INSERT INTO ai_jobs (kind, provider, model, input_text, status, attempts,"
                " latency_ms, input_tokens, output_tokens, cost_usd, created_at, completed_at)"
                " SELECT 'chat', (ARRAY['openai','gemini','mistral','deepseek'])[1 + g %% 4],"
                " 'm', 'x', CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'completed' END, g %% 3,"
                " 100 + g %% 5000, 10, 20, 0.0001, now() - g * interval '1 second',"
                " now() - g * interval '1 second' + interval '1 second'"
                " FROM generate_series(1, %s) g",
                (args.rows,),
            )
            conn.execute("ALTER TABLE ai_jobs ENABLE TRIGGER USER")
            conn.execute("ANALYZE")

        async def scrape() -> float:
            started = time.perf_counter()
            await metrics.render_metrics(url)
            return time.perf_counter() - started

        async def run() -> tuple[float, float]:
            full: list[float] = []
            folded: list[float] = []
            for _ in range(args.scrapes):
                metrics._TOTALS.clear()  # a new process: reads everything
                full.append(await scrape())
                folded.append(await scrape())  # the same process, next scrape
            return median(full), median(folded)

        full, folded = asyncio.run(run())
    emit(
        f"/metrics scrape, {args.rows:,} finished ai_jobs, after the first",
        folded * 1000,
        "ms",
        baseline=full * 1000,
        baseline_label="reading all rows (first scrape)",
        better="lower",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
