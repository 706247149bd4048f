"""run_all's peers table: ratio direction, unavailable peers, and the BENCHMARKS.md sections
it leaves alone."""

from __future__ import annotations

from typing import Any

from tests.bench import run_all


def row(figure: str, better: str, ours: float, peers: dict[str, Any]) -> dict[str, Any]:
    return {
        "table": "peers",
        "figure": figure,
        "unit": "u",
        "better": better,
        "value": ours,
        "peers": peers,
    }


def test_ratio_is_above_one_when_ours_is_better_in_either_direction() -> None:
    assert run_all._ratio(200.0, 100.0, "higher") == "2"
    assert run_all._ratio(2.0, 4.0, "lower") == "2"
    assert run_all._ratio(4.0, 2.0, "lower") == "0.5"
    assert run_all._ratio(None, 2.0, "lower") == "–"


def test_table_names_versions_and_footnotes_unavailable_peers() -> None:
    rows = [
        row(
            "throughput",
            "higher",
            900.0,
            {
                "gw": {"version": "0.18.0", "value": 1800.0},
                "pgq": {"version": "1.6.0", "unavailable": "npm error ETARGET"},
            },
        ),
        row("latency p50", "lower", 3.0, {"gw": {"version": "0.18.0", "value": 1.5}}),
    ]
    table, reasons = run_all.peers_table(rows)
    lines = table.splitlines()
    assert lines[0] == (
        "| figure | unit | ours | gw 0.18.0 | pgq 1.6.0 | ratio (ours vs peer, > 1 = ours better) |"
    )
    assert lines[2] == "| throughput | u | 900 | 1,800 | unavailable¹ | 0.5 vs gw |"
    assert lines[3] == "| latency p50 | u | 3 | 1.5 |  | 0.5 vs gw |"
    assert reasons == ["pgq: npm error ETARGET"]


def test_peers_section_is_replaced_and_the_rest_kept() -> None:
    doc = (
        "# Benchmarks\n\n| main |\n\n"
        f"{run_all.PEERS_BEGIN}\nold peers\n{run_all.PEERS_END}\n\n## Chaos\n\nkept\n"
    )
    rest, peers = run_all._split_peers(doc)
    assert "old peers" in peers and "old peers" not in rest
    assert rest.startswith("# Benchmarks") and rest.rstrip().endswith("kept")
    assert run_all._split_peers("no section") == ("no section", "")
