"""Benchmark: how fast does the emulator turn a 50,000-line OpenAI batch into results?

Run ``python tests/bench/bench_emulator.py [--lines N] [--runs R]`` (not collected by
pytest). Each run uploads a structured-output chat batch, creates it with
``state_seconds=0``, polls once (which generates the output file on disk) and downloads the
output through the real OpenAI SDK. Prints per-run figures, the median result lines/s,
peak RSS, and one machine-readable line ``RESULT emulator_lines_per_s=<median>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from worker.emulator import Emulator, EmulatorConfig

SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "category": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["summary", "category", "score", "tags"],
    "additionalProperties": False,
}


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            line = {
                "custom_id": f"q-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "Antworte als JSON."},
                        {"role": "user", "content": f"Frage Nummer {i}: worum geht es?"},
                    ],
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
                    },
                },
            }
            f.write(json.dumps(line) + "\n")


def one_run(client: OpenAI, input_path: Path, n: int) -> tuple[float, float]:
    """Returns (seconds to validate + generate the results, seconds to download them)."""
    with input_path.open("rb") as fh:
        up = client.files.create(file=("bench.jsonl", fh), purpose="batch")
    # Timing includes create (the emulator validates the whole input file there).
    t0 = time.perf_counter()
    batch = client.batches.create(
        input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)  # state_seconds=0: this poll generates results
    t1 = time.perf_counter()
    assert batch.status == "completed", batch.status
    assert batch.output_file_id is not None
    lines = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as resp:
        for _ in resp.iter_lines():
            lines += 1
    t2 = time.perf_counter()
    assert lines == n, (lines, n)
    return t1 - t0, t2 - t1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    emu = Emulator(config=EmulatorConfig(state_seconds=0))
    emu.start()
    try:
        client = OpenAI(api_key="sk-bench", base_url=emu.openai_base_url, max_retries=0)
        with tempfile.TemporaryDirectory() as tmp:
            input_path = Path(tmp) / "bench.jsonl"
            write_input(input_path, args.lines)
            rates = []
            for run in range(args.runs):
                gen, dl = one_run(client, input_path, args.lines)
                rate = args.lines / (gen + dl)
                rates.append(rate)
                print(
                    f"run {run + 1}: generate {gen:.2f}s ({args.lines / gen:,.0f} lines/s), "
                    f"download {dl:.2f}s, end-to-end {rate:,.0f} lines/s"
                )
                emu.reset()
                emu.configure(state_seconds=0)
        median = statistics.median(rates)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"median {median:,.0f} result lines/s (generate + download), peak RSS {peak_mb:.0f} MB"
        )
        print(f"RESULT emulator_lines_per_s={median:.0f}")
        from tests.bench.common import emit

        emit(
            f"emulator throughput, {args.lines}-line OpenAI batch (generate + download)",
            median,
            "result lines/s",
            target="≥ 20,000 lines/s",
        )
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
