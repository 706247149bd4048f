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
from typing import Any

BENCHES = [
    ("wake-up", ["tests.bench.bench_wakeup"]),
    ("pipeline", ["tests.bench.bench_pipeline"]),
    ("realtime", ["tests.bench.bench_realtime"]),
    ("emulator", ["tests.bench.bench_emulator"]),
    ("metrics", ["tests.bench.bench_metrics"]),
    ("footprint", ["tests.bench.bench_footprint"]),
    ("peers", ["tests.bench.bench_peers"]),
    ("drain", ["tests.bench.bench_drain"]),
]
PEERS_BEGIN = "<!-- peers:begin (written by run_all) -->"
PEERS_END = "<!-- peers:end -->"
FINDINGS = Path(__file__).resolve().parent / "peers" / "FINDINGS.md"
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


def _peer_cell(entry: dict[str, Any]) -> str:
    if "unavailable" in entry:
        return "unavailable¹"
    cell = fmt(entry.get("value"))
    if entry.get("note"):
        cell += f" ({entry['note']})"
    return cell


def _ratio(ours: float | None, peer: float | None, better: str) -> str:
    """Ours against the peer, > 1 = ours better (higher-is-better: ours/peer;
    lower-is-better: peer/ours)."""
    if not ours or not peer:
        return "–"
    return fmt(ours / peer if better == "higher" else peer / ours)


def peers_table(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The peers table (figure, ours, each peer with its version, ratio per peer) and the
    reasons of unavailable peers."""
    names: list[str] = []
    versions: dict[str, str] = {}
    reasons: list[str] = []
    for r in rows:
        for name, entry in r["peers"].items():
            if name not in names:
                names.append(name)
            if entry.get("version"):
                versions[name] = entry["version"]
            if "unavailable" in entry:
                why = f"{name}: {entry['unavailable']}"
                if why not in reasons:
                    reasons.append(why)
    head = (
        ["figure", "unit", "ours"]
        + [f"{n} {versions.get(n, '')}".strip() for n in names]
        + ["ratio (ours vs peer, > 1 = ours better)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(names) + 1) + "---|"]
    for r in rows:
        cells = [str(r["figure"]), str(r["unit"]), fmt(r.get("value"))]
        ratios = []
        for n in names:
            entry = r["peers"].get(n)
            if entry is None:
                cells.append("")
                continue
            cells.append(_peer_cell(entry))
            if "value" in entry:
                ratios.append(f"{_ratio(r.get('value'), entry['value'], r['better'])} vs {n}")
        cells.append("; ".join(ratios) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), reasons


def peers_section(rows: list[dict[str, Any]], when: str, seconds: float) -> str:
    table, reasons = peers_table(rows)
    unavailable = "".join(f"\n¹ {r}" for r in reasons)
    findings = FINDINGS.read_text().strip() if FINDINGS.exists() else ""
    return f"""{PEERS_BEGIN}
## Peers

Measured by `python -m tests.bench.run_all peers` (part of `make bench`) on {when}, in
{seconds:.0f} s, on the machine above: every system in the same run, on the same Postgres
server, each on a database of its own; medians of 3 runs (each cell's runs are in the
`BENCH` lines the part prints). Peers are installed on first use into `.bench-peers/`
(tests/bench/peers/env.py); method in tests/bench/bench_peers.py and tests/bench/peers/.

{table}
{unavailable}

{findings}
{PEERS_END}
"""


def _split_peers(doc: str) -> tuple[str, str]:
    """(the document without its peers section, the peers section or "")."""
    start, end = doc.find(PEERS_BEGIN), doc.find(PEERS_END)
    if start < 0 or end < start:
        return doc, ""
    end += len(PEERS_END)
    return doc[:start].rstrip() + "\n" + doc[end:].lstrip("\n"), doc[start:end] + "\n"


def main() -> int:
    only = set(sys.argv[1:])
    rows: list[dict[str, object]] = []
    peer_rows: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.monotonic()
    peers_seconds = 0.0
    for name, mod in BENCHES:
        if only and name not in only:
            continue
        print(f"== {name}", flush=True)
        part_started = time.monotonic()
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
                row = {"bench": name, **json.loads(line[6:])}
                (peer_rows if row.get("table") == "peers" else rows).append(row)
            else:
                print("   " + line.rstrip(), flush=True)
        if proc.wait() != 0:
            failures.append(name)
        if name == "peers":
            peers_seconds = time.monotonic() - part_started
    header = "| figure | median | unit | baseline (same run) | ratio | target |"
    lines = [header, "|---|---:|---|---|---:|---|"]
    for r in rows:
        base = f"{fmt(r['baseline'])} ({r['baseline_label']})" if r["baseline"] is not None else "–"  # type: ignore[arg-type]
        lines.append(
            f"| {r['figure']} | {fmt(r['value'])} | {r['unit']} | {base} | "  # type: ignore[arg-type]
            f"{fmt(r['ratio'])} | {r['target']} |"
        )  # type: ignore[arg-type]
    table = "\n".join(lines)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    path = ROOT / "BENCHMARKS.md"
    old_doc, old_peers = _split_peers(path.read_text() if path.exists() else "")
    new_peers = peers_section(peer_rows, when, peers_seconds) if peer_rows else ""
    if peer_rows:
        print()
        print(peers_table(peer_rows)[0])
    main_parts = [n for n, _ in BENCHES if n != "peers" and (not only or n in only)]
    if not main_parts:
        # Only the peers part ran: replace its section, leave the rest of the file alone.
        path.write_text(old_doc.rstrip() + "\n\n" + (new_peers or old_peers))
        print(f"\nwrote the peers section of BENCHMARKS.md ({len(peer_rows)} figures)")
        return 1 if failures else 0
    print()
    print(table)
    # Hand-written sections after the table (## Chaos ...) are kept.
    tail_at = old_doc.find("\n## ")
    tail = old_doc[tail_at:].strip() + "\n" if tail_at >= 0 else ""
    doc = f"""# Benchmarks

Measured by `make bench` ({", ".join(main_parts)}) on
{when}, in {time.monotonic() - started:.0f} s.

Machine: {machine()}.

Every figure is a median over the runs its benchmark makes (see each script in
`tests/bench/`), and every baseline was measured in the same run on the same machine.
Reproduce with `make bench` (or `python -m tests.bench.run_all pipeline` for one part).
{"Benchmarks that failed: " + ", ".join(failures) if failures else ""}

{table}

{new_peers or old_peers}
{tail}"""
    path.write_text(doc)
    print(f"\nwrote BENCHMARKS.md ({len(rows) + len(peer_rows)} figures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
