"""Pipeline throughput: pending → completed for N questions × 3 batch models (+ summary)
with the emulator at zero batch delay, against, in the same run,
  - the raw Postgres ceiling: a set-based claim UPDATE plus a multi-row INSERT of the same
    number of comment rows (no AI at all), and
  - a one-Procrastinate-job-per-question design (each job claims one question and writes
    its three comment rows), measured on a sample and extrapolated as a rate.
Also the peak RSS of a worker process ingesting one 50,000-line batch."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

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

N = int(os.environ.get("BENCH_PIPELINE_QUESTIONS", "20000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
ONE_JOB_SAMPLE = 1000

INSERT = (
    "INSERT INTO questions (question, option_a, option_b, option_c, option_d, option_e,"
    " correct_answer, subject, ai_commentary_status)"
    " SELECT 'Frage ' || g || ': Welches Enzym spaltet Stärke im Mund?', 'Pepsin',"
    " 'Ptyalin (alpha-Amylase)', 'Lipase', 'Trypsin', 'Laktase', 'B', 'Biochemie', %s"
    " FROM generate_series(1, %s) g"
)


def pipeline_run(n: int) -> tuple[float, int]:
    """Seconds from insert to all completed, and peak RSS (KiB) of the worker process."""
    with emulator_process("--state-seconds", "0") as base, fresh_database("pipe") as url:
        set_settings(
            url,
            models=MODELS,
            models_enabled=ENABLED,
            batch_size=min(n, 50000),
            processing_delay_minutes=0,
        )
        env = worker_env(
            url,
            **emulator_env(base),
            POLL_MIN_SECONDS="0.05",
            POLL_MAX_SECONDS="0.5",
            FETCH_JOB_POLLING_INTERVAL="0.5",
        )
        with psycopg.connect(url, autocommit=True) as conn:
            t0 = time.monotonic()
            conn.execute(INSERT, ("pending", n))
            proc = subprocess.run(
                [sys.executable, "-m", "worker", "run", "--until-idle", "--timeout", "900"],
                env=env,
                capture_output=True,
            )
            elapsed = time.monotonic() - t0
            done = conn.execute(
                "SELECT count(*) FROM questions WHERE ai_commentary_status = 'completed'"
            ).fetchone()
        if proc.returncode != 0 or not done or done[0] != n:
            raise RuntimeError(f"pipeline run failed: {done} {proc.stderr.decode()[-2000:]}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return elapsed, rss


def ceiling_run(n: int) -> float:
    with fresh_database("ceil") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE questions DISABLE TRIGGER USER")
        conn.execute(INSERT, ("pending", n))
        conn.execute("ALTER TABLE questions ENABLE TRIGGER USER")
        t0 = time.monotonic()
        with conn.transaction():
            conn.execute(
                "UPDATE questions SET ai_commentary_status = 'processing',"
                " ai_commentary_claimed_at = now() WHERE ai_commentary_status = 'pending'"
            )
            conn.execute(
                "INSERT INTO ai_answer_comments (question_id, model_key, chosen_answer, general_comment,"
                " comment_a, comment_b, comment_c, comment_d, comment_e)"
                " SELECT q.id, m, 'B', 'Allgemeiner Kommentar zur Frage', 'a', 'b', 'c', 'd', 'e'"
                " FROM questions q CROSS JOIN unnest(ARRAY['chatgpt','gemini','mistral']) m"
            )
        return time.monotonic() - t0


ONE_JOB_APP = """
import procrastinate, psycopg_pool, os
from psycopg_pool import AsyncConnectionPool
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["DATABASE_URL"]))

@app.task(name="one_question", queue="one")
async def one_question(question_id: str) -> None:
    async with app.connector.pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("UPDATE questions SET ai_commentary_status = 'processing' WHERE id = %s", (question_id,))
            await conn.execute(
                "INSERT INTO ai_answer_comments (question_id, model_key, chosen_answer, general_comment,"
                " comment_a, comment_b, comment_c, comment_d, comment_e)"
                " SELECT %s, m, 'B', 'Allgemeiner Kommentar zur Frage', 'a', 'b', 'c', 'd', 'e'"
                " FROM unnest(ARRAY['chatgpt','gemini','mistral']) m", (question_id,))
"""


ONE_JOB_AI_APP = """
import json, os, procrastinate
from openai import AsyncOpenAI
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["DATABASE_URL"]))
client = AsyncOpenAI(base_url=os.environ["COMPAT_BASE_URL"], api_key="bench", max_retries=0)
SCHEMA = json.loads(os.environ["COMMENTARY_SCHEMA"])

@app.task(name="one_question_ai", queue="one")
async def one_question_ai(question_id: str, text: str) -> None:
    rows = []
    for model in ("chatgpt", "gemini", "mistral"):
        r = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "commentary", "schema": SCHEMA, "strict": True}})
        c = json.loads(r.choices[0].message.content)
        rows.append((question_id, model, c["chosen_answer"], c["general_comment"]))
    async with app.connector.pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("UPDATE questions SET ai_commentary_status = 'completed' WHERE id = %s", (question_id,))
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO ai_answer_comments (question_id, model_key, chosen_answer, general_comment)"
                    " VALUES (%s, %s, %s, %s)", rows)
"""


def _drain_one_job_queue(url: str, env: dict[str, str], app_module: str) -> float:
    """Seconds a `procrastinate worker --concurrency=8` of ``app_module`` takes to run every
    job queued on ``one``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "procrastinate",
            f"--app={app_module}.app",
            "worker",
            "--queues=one",
            "--concurrency=8",
            "--wait",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                left = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo','doing')"
                ).fetchone()
                if left and left[0] == 0:
                    return time.monotonic() - t0
                if proc.poll() is not None:
                    raise RuntimeError("one-job-per-question worker exited")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(20)


def one_job_per_question_ai_rate(base: str) -> float:
    """Questions/s when every question is its own Procrastinate job that calls the three
    models (realtime chat on the emulator, structured output) and writes the comments."""
    import tempfile

    from worker.commentary.schemas import COMMENTARY_SCHEMA

    n = ONE_JOB_SAMPLE // 2
    with fresh_database("onejobai") as url, tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "onejob_ai_app.py"), "w") as f:
            f.write(ONE_JOB_AI_APP)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE questions DISABLE TRIGGER USER")
            conn.execute(INSERT, ("completed", n))
            conn.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
                " SELECT 'one', 'one_question_ai', jsonb_build_object('question_id', id::text,"
                " 'text', question || ' A) ' || option_a || ' B) ' || option_b) FROM questions"
            )
        env = worker_env(
            url,
            PYTHONPATH=d,
            COMPAT_BASE_URL=f"{base}/perplexity/v1",
            COMMENTARY_SCHEMA=json.dumps(COMMENTARY_SCHEMA),
        )
        elapsed = _drain_one_job_queue(url, env, "onejob_ai_app")
        with psycopg.connect(url, autocommit=True) as conn:
            done = conn.execute("SELECT count(*) FROM ai_answer_comments").fetchone()
        if not done or done[0] != 3 * n:
            raise RuntimeError(f"one-job-per-question AI run wrote {done} comment rows")
        return n / elapsed


def one_job_per_question_rate() -> float:
    """Questions/s when every question is its own Procrastinate job (no AI calls at all)."""
    import tempfile

    with fresh_database("onejob") as url, tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "onejob_app.py"), "w") as f:
            f.write(ONE_JOB_APP)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE questions DISABLE TRIGGER USER")
            conn.execute(INSERT, ("completed", ONE_JOB_SAMPLE))
            conn.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args)"
                " SELECT 'one', 'one_question', jsonb_build_object('question_id', id::text) FROM questions"
            )
        env = worker_env(url, PYTHONPATH=d)
        elapsed = _drain_one_job_queue(url, env, "onejob_app")
        return ONE_JOB_SAMPLE / elapsed


def peak_rss_50k() -> float:
    """Peak RSS (MB) of a worker process that submits and ingests one 50,000-line batch."""
    n = 50000
    with emulator_process("--state-seconds", "0") as base, fresh_database("rss") as url:
        set_settings(
            url,
            models={"chatgpt": MODELS["chatgpt"]},
            models_enabled={"chatgpt": True},
            batch_size=n,
            processing_delay_minutes=0,
            summary_model={"provider": "mock", "model": "mock", "mode": "instant"},
        )
        env = worker_env(url, **emulator_env(base), POLL_MIN_SECONDS="0.05", POLL_MAX_SECONDS="0.5")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(INSERT, ("pending", n))
        script = (
            "import resource, subprocess, sys; p = subprocess.run([sys.executable, '-m', 'worker', 'run',"
            " '--until-idle', '--timeout', '900']); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ceilings = [N / ceiling_run(N) for _ in range(RUNS)]
    ours = []
    for _ in range(RUNS):
        elapsed, _ = pipeline_run(N)
        ours.append(N / elapsed)
        print(f"pipeline: {N} questions in {elapsed:.1f}s = {N / elapsed:.0f} q/s", flush=True)
    one_job = [one_job_per_question_rate() for _ in range(RUNS)]
    with emulator_process("--state-seconds", "0") as base:
        one_job_ai = [one_job_per_question_ai_rate(base) for _ in range(RUNS)]
    print(
        f"ceiling q/s: {[round(x) for x in ceilings]}; one-job-per-question q/s: "
        f"{[round(x) for x in one_job]} (doing the AI work: {[round(x) for x in one_job_ai]});"
        f" ours: {[round(x) for x in ours]}"
    )
    emit(
        f"pipeline throughput, {N} questions × 3 models (+summary), emulator at 0 delay",
        median(ours),
        "questions/s",
        baseline=median(ceilings),
        baseline_label="raw Postgres ceiling (set-based claim + comment INSERT)",
        target="≥ 0.5 × ceiling",
    )
    emit(
        "pipeline throughput vs one Procrastinate job per question doing the same AI work",
        median(ours),
        "questions/s",
        baseline=median(one_job_ai),
        baseline_label="one job per question: 3 realtime calls to the emulator + writes, concurrency 8",
        target="≥ 20×",
    )
    emit(
        "pipeline throughput vs one Procrastinate job per question (no AI calls at all)",
        median(ours),
        "questions/s",
        baseline=median(one_job),
        baseline_label="one job per question (no AI calls), concurrency 8",
        target="≥ 20×",
    )
    rss = peak_rss_50k()
    emit(
        "peak RSS of a worker ingesting a 50,000-line batch",
        rss,
        "MB",
        target="< 300 MB",
        better="lower",
    )


if __name__ == "__main__":
    main()
