"""Beside the peers: graphile-worker, pgqueuer, Procrastinate and the pgai vectorizer worker,
measured in the same run on this machine against our realtime lane.

Run ``python -m tests.bench.run_all peers`` (part of ``make bench``) or
``python -m tests.bench.bench_peers [--quick] [--runs N] [--part queues|embeddings]``
(``PEERS_QUICK=1`` makes run_all's part quick).
The peers are installed on first use into ``.bench-peers/`` (see tests/bench/peers/env.py),
outside the project's dependencies; a peer that cannot be installed or run is reported as
unavailable (with the reason) and the rest is still measured. Each figure is the median
of ``--runs`` (default 3) runs; runs are interleaved (run 1 of every system, then run 2,
...) so that load from other work on the machine falls on all systems alike.

Queue figures: tests/bench/peers/queues.py. Embeddings: tests/bench/peers/embeddings.py.
Prints one ``BENCH {json}`` line per figure with a ``peers`` object, which run_all
renders as the peers table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.peers import embeddings as emb
from tests.bench.peers import queues as q
from tests.bench.peers.env import PeerUnavailable
from worker.database import resolve_database_url

OURS = "ours"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    return text[:400]


def emit(
    figure: str,
    unit: str,
    better: str,
    values: dict[str, list[float]],
    versions: dict[str, str],
    unavailable: dict[str, str],
    peers: list[str],
    notes: dict[str, str] | None = None,
) -> None:
    """One figure: our median and each peer's (or why it has none)."""

    def med(name: str) -> float | None:
        xs = values.get(name) or []
        return round(statistics.median(xs), 3) if xs else None

    out: dict[str, Any] = {
        "table": "peers",
        "figure": figure,
        "unit": unit,
        "better": better,
        "value": med(OURS),
        "runs": [round(x, 3) for x in values.get(OURS, [])],
        "peers": {},
    }
    for name in peers:
        entry: dict[str, Any] = {"version": versions.get(name, "")}
        if name in unavailable and not values.get(name):
            entry["unavailable"] = unavailable[name]
        else:
            entry["value"] = med(name)
            entry["runs"] = [round(x, 3) for x in values.get(name, [])]
        if notes and name in notes:
            entry["note"] = notes[name]
        out["peers"][name] = entry
    print("BENCH " + json.dumps(out, ensure_ascii=False), flush=True)


def queue_part(runs: int) -> None:
    server = resolve_database_url()
    systems: dict[str, q.QueueSystem] = {}
    versions: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for name, make in q.SYSTEMS:
        try:
            systems[name] = make()
            versions[name] = systems[name].version
        except (PeerUnavailable, OSError, RuntimeError) as exc:
            unavailable[name] = _reason(exc)
            print(f"{name}: unavailable: {unavailable[name]}", flush=True)
    failed: dict[str, list[str]] = {}
    tp: dict[str, list[float]] = {}
    capped: dict[str, list[int]] = {}
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    for run in range(runs):
        for name, system in systems.items():
            if name in unavailable:
                continue
            label = name.split()[0].replace("-", "")
            started = time.monotonic()
            try:
                # Latency on a database of its own: a capped throughput run leaves jobs.
                with q.own_database(server, label) as url:
                    system.setup(url)
                    t = q.throughput(system, url, f"{label}-tp")
                with q.own_database(server, label) as url:
                    system.setup(url)
                    lat = q.latency(system, url, f"{label}-lat")
            except Exception as exc:
                traceback.print_exc()
                if name == OURS:
                    raise
                failed.setdefault(name, []).append(f"run {run + 1}: {_reason(exc)}")
                continue
            tp.setdefault(name, []).append(t.jobs_per_s)
            if t.done < q.N_JOBS:
                capped.setdefault(name, []).append(t.done)
            p50.setdefault(name, []).append(statistics.median(lat))
            p99.setdefault(name, []).append(percentile(lat, 99))
            print(
                f"run {run + 1} {name}: {t.jobs_per_s:,.0f} jobs/s"
                + (
                    f" ({t.done} of {q.N_JOBS} done in {q.THROUGHPUT_CAP_S:.0f} s)"
                    if t.done < q.N_JOBS
                    else ""
                )
                + f", latency p50 {statistics.median(lat):.2f} ms p99 {percentile(lat, 99):.2f} ms"
                f" [{time.monotonic() - started:.0f} s]",
                flush=True,
            )
    peers = [n for n, _ in q.SYSTEMS if n != OURS]
    notes = {
        n: f"drained {min(d):,} of {q.N_JOBS:,} in the {q.THROUGHPUT_CAP_S:.0f} s cap"
        for n, d in capped.items()
    }
    for n, why in failed.items():
        if n not in tp:
            unavailable[n] = "failed: " + "; ".join(why)
        else:
            notes[n] = (notes.get(n, "") + f"; {len(why)} of {runs} runs failed").lstrip("; ")
    fail_notes = {n: f"{len(w)} of {runs} runs failed" for n, w in failed.items() if n in tp}
    conc = q.CONCURRENCY
    emit(
        f"queue throughput: {q.N_JOBS:,} no-op jobs, one INSERT, concurrency {conc}",
        "jobs/s",
        "higher",
        tp,
        versions,
        unavailable,
        peers,
        notes,
    )
    for label, data in (("p50", p50), ("p99", p99)):
        emit(
            f"insert commit → job start {label} ({q.N_LATENCY} single inserts, {q.GAP * 1000:.0f} ms apart)",
            "ms",
            "lower",
            data,
            versions,
            unavailable,
            peers,
            fail_notes,
        )


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def embeddings_part(runs: int) -> None:
    from tests.fixtures.private_pg import PrivateCluster

    name = "pgai vectorizer"
    versions: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    peer = None
    try:
        peer = emb.pgai_peer()
        versions[name] = peer.version
    except (PeerUnavailable, OSError, RuntimeError) as exc:
        unavailable[name] = _reason(exc)
        print(f"{name}: unavailable: {unavailable[name]}", flush=True)
    results: dict[str, list[emb.EmbedResult]] = {}
    failed: list[str] = []
    emu = emb.Emulator()
    try:
        emu.call("POST", "/_emulator/config", {"latency_ms": emb.EMBED_LATENCY_MS})
        with PrivateCluster() as pg:
            admin = pg.url("postgres")
            for run in range(runs):
                started = time.monotonic()
                r = emb.run_ours(emu, admin, "ours-emb")
                results.setdefault(OURS, []).append(r)
                print(f"run {run + 1} ours: {r} [{time.monotonic() - started:.0f} s]", flush=True)
                if peer is None:
                    continue
                started = time.monotonic()
                try:
                    r = emb.run_pgai(peer, emu, admin, "pgai-emb")
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(f"run {run + 1}: {_reason(exc)}")
                    continue
                results.setdefault(name, []).append(r)
                print(f"run {run + 1} pgai: {r} [{time.monotonic() - started:.0f} s]", flush=True)
    finally:
        emu.stop()
    setting = (
        f"{emb.N_TEXTS:,} texts, {emb.EMBED_LATENCY_MS:.0f} ms provider latency,"
        f" concurrency {emb.EMBED_CONCURRENCY}"
    )
    figures: list[tuple[str, str, str, str]] = [
        (f"embeddings: texts/s ({setting})", "texts/s", "higher", "texts_per_s"),
        ("embeddings: insert → first vector stored", "s", "lower", "first_s"),
        ("embeddings: insert → last vector stored", "s", "lower", "last_s"),
        ("embeddings: provider requests made", "requests", "lower", "requests"),
    ]
    notes: dict[str, str] = {}
    if failed and name not in results:
        unavailable[name] = "failed: " + "; ".join(failed)
    elif failed:
        notes[name] = f"{len(failed)} of {runs} runs failed"
    for figure, unit, better, attr in figures:
        values = {n: [float(getattr(r, attr)) for r in rs] for n, rs in results.items()}
        emit(figure, unit, better, values, versions, unavailable, [name], notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 run, smaller sizes")
    p.add_argument("--part", choices=["queues", "embeddings"], default=None)
    args = p.parse_args(argv)
    # SIGTERM (run_all stopped, timeout): unwind, so workers stop and databases are dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = args.runs
    if args.quick or os.environ.get("PEERS_QUICK") == "1":
        runs = 1
        q.N_JOBS, q.N_LATENCY, emb.N_TEXTS = 2000, 40, 1000
    if args.part in (None, "queues"):
        queue_part(runs)
    if args.part in (None, "embeddings"):
        embeddings_part(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
