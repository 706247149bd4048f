"""`make bench`: run every benchmark, print one table of all figures (median, baseline
measured in the same run, ratio, target) and write it to BENCHMARKS.md with the machine
and the command to reproduce."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCHES = [
    ("wake-up", ["tests.bench.bench_wakeup"]),
    ("pipeline", ["tests.bench.bench_pipeline"]),
    ("realtime", ["tests.bench.bench_realtime"]),
    ("emulator", ["tests.bench.bench_emulator"]),
    ("metrics", ["tests.bench.bench_metrics"]),
    ("footprint", ["tests.bench.bench_footprint"]),
]
ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {pg or 'PostgreSQL'}"
    )


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def main() -> int:
    only = set(sys.argv[1:])
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    started = time.monotonic()
    for name, mod in BENCHES:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", *mod],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("BENCH "):
                rows.append({"bench": name, **json.loads(line[6:])})
            else:
                print("   " + line.rstrip(), flush=True)
        if proc.wait() != 0:
            failures.append(name)
    header = "| figure | median | unit | baseline (same run) | ratio | target |"
    lines = [header, "|---|---:|---|---|---:|---|"]
    for r in rows:
        base = f"{fmt(r['baseline'])} ({r['baseline_label']})" if r["baseline"] is not None else "–"  # type: ignore[arg-type]
        lines.append(
            f"| {r['figure']} | {fmt(r['value'])} | {r['unit']} | {base} | "  # type: ignore[arg-type]
            f"{fmt(r['ratio'])} | {r['target']} |"
        )  # type: ignore[arg-type]
    table = "\n".join(lines)
    print()
    print(table)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    doc = f"""# Benchmarks

Measured by `make bench` ({", ".join(n for n, _ in BENCHES if not only or n in only)}) on
{when}, in {time.monotonic() - started:.0f} s.

Machine: {machine()}.

Every figure is a median over the runs its benchmark makes (see each script in
`tests/bench/`), and every baseline was measured in the same run on the same machine.
Reproduce with `make bench` (or `python -m tests.bench.run_all pipeline` for one part).
{"Benchmarks that failed: " + ", ".join(failures) if failures else ""}

{table}
"""
    (ROOT / "BENCHMARKS.md").write_text(doc)
    print(f"\nwrote BENCHMARKS.md ({len(rows)} figures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
