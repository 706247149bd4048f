"""Benchmark: how fast does the emulator turn a 50,000-line OpenAI batch into results?

Run ``python -m tests.bench.bench_emulator [--lines N] [--runs R]`` (not collected by
pytest). Each run uploads a structured-output chat batch, creates it with
``state_seconds=0``, polls once (which generates the output file on disk) and downloads the
output through the real OpenAI SDK. Prints per-run figures (with the process CPU seconds
spent validating + generating, less noisy than wall time on a shared machine), the median
result lines/s, peak RSS, and one machine-readable line ``RESULT emulator_lines_per_s=<median>``.

``--realtime`` measures per-request cost instead: the emulator in its own process, realtime
structured-output chat calls at concurrency 50 through ``AsyncOpenAI`` and through a minimal
keep-alive client (which the emulator, not the client, limits), reporting requests/s and the
emulator's CPU milliseconds per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def one_run(client: OpenAI, input_path: Path, n: int) -> tuple[float, float, float]:
    """Returns (seconds to validate + generate the results, seconds to download them, CPU
    seconds of this process while validating + generating)."""
    with input_path.open("rb") as fh:
        up = client.files.create(file=("bench.jsonl", fh), purpose="batch")
    # Timing includes create (the emulator validates the whole input file there).
    c0 = time.process_time()
    t0 = time.perf_counter()
    batch = client.batches.create(
        input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(batch.id)  # state_seconds=0: this poll generates results
    t1 = time.perf_counter()
    cpu = time.process_time() - c0
    assert batch.status == "completed", batch.status
    assert batch.output_file_id is not None
    lines = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as resp:
        for _ in resp.iter_lines():
            lines += 1
    t2 = time.perf_counter()
    assert lines == n, (lines, n)
    return t1 - t0, t2 - t1, cpu


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--realtime", action="store_true", help="measure realtime calls instead")
    ap.add_argument("--requests", type=int, default=5000, help="realtime calls per run")
    args = ap.parse_args()
    if args.realtime:
        return realtime_main(args.requests, args.runs)
    emu = Emulator(config=EmulatorConfig(state_seconds=0))
    emu.start()
    try:
        client = OpenAI(api_key="sk-bench", base_url=emu.openai_base_url, max_retries=0)
        with tempfile.TemporaryDirectory() as tmp:
            input_path = Path(tmp) / "bench.jsonl"
            write_input(input_path, args.lines)
            rates = []
            cpus = []
            for run in range(args.runs):
                gen, dl, cpu = one_run(client, input_path, args.lines)
                rate = args.lines / (gen + dl)
                rates.append(rate)
                cpus.append(cpu)
                print(
                    f"run {run + 1}: generate {gen:.2f}s ({args.lines / gen:,.0f} lines/s, "
                    f"{cpu:.2f} CPU-s), download {dl:.2f}s, end-to-end {rate:,.0f} lines/s"
                )
                emu.reset()
                emu.configure(state_seconds=0)
        median = statistics.median(rates)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"median {median:,.0f} result lines/s (generate + download), "
            f"{statistics.median(cpus):.2f} CPU-s per {args.lines:,} lines, "
            f"peak RSS {peak_mb:.0f} MB"
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


# --------------------------------------------------------------------------- realtime


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sdk_calls(base: str, n: int, concurrency: int) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-bench", base_url=base + "/openai/v1", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            r = await client.chat.completions.create(**_chat_body(i))
            assert r.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()


async def _raw_calls(base: str, n: int, concurrency: int) -> None:
    """HTTP/1.1 keep-alive connections, one request at a time each, nothing else."""
    host, port = base.removeprefix("http://").split(":")
    todo = iter(range(n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for i in todo:
            body = json.dumps(_chat_body(i)).encode()
            writer.write(
                b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: emulator\r\n"
                b"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            status = await reader.readline()
            assert b" 200 " in status, status
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))


def _chat_body(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Antworte als JSON."},
            {"role": "user", "content": f"Frage Nummer {i}: worum geht es?"},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        },
    }


def realtime_main(n: int, runs: int, concurrency: int = 50) -> int:
    from tests.bench.common import emit, free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "emulator", "--port", str(port), "--state-seconds", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        for label, calls in (("AsyncOpenAI", _sdk_calls), ("raw keep-alive", _raw_calls)):
            asyncio.run(calls(base, 300, concurrency))  # warm-up: connections, caches
            rates, cpu_ms = [], []
            for run in range(runs):
                c0, t0 = _process_cpu(proc.pid), time.perf_counter()
                asyncio.run(calls(base, n, concurrency))
                dt, dc = time.perf_counter() - t0, _process_cpu(proc.pid) - c0
                rates.append(n / dt)
                cpu_ms.append(1000 * dc / n)
                print(
                    f"{label} run {run + 1}: {n / dt:,.0f} requests/s, "
                    f"emulator {1000 * dc / n:.3f} CPU-ms per request"
                )
            rate, per_call = statistics.median(rates), statistics.median(cpu_ms)
            print(f"{label}: median {rate:,.0f} requests/s, {per_call:.3f} CPU-ms per request")
            emit(
                f"emulator realtime chat, {label} client, concurrency {concurrency}",
                rate,
                "requests/s",
            )
            emit(
                f"emulator CPU per realtime chat call ({label} client)",
                per_call,
                "CPU-ms/request",
                better="lower",
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
