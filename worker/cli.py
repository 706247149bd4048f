"""``python -m worker``: the command surface.

db migrate | db status     apply / list the schema (the only place DDL runs)
run [--until-idle]         worker processes (self-healing)
emulator                   the local provider emulator
demo                       end-to-end demo on sample questions
status [--json]            what the worker is doing
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg
import psycopg.errors
from dotenv import load_dotenv

from worker import logs
from worker.config import get_settings
from worker.errors import WorkerError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="schema: migrate or status")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply the Procrastinate schema and worker/schema/*.sql")
    db_sub.add_parser("status", help="list applied and pending migrations")

    run = sub.add_parser("run", help="run worker processes")
    run.add_argument(
        "--until-idle", action="store_true", help="exit once nothing is pending, claimed or due"
    )
    run.add_argument(
        "--processes", type=int, default=None, help="worker processes (default WORKER_PROCESSES, 1)"
    )
    run.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    emu = sub.add_parser("emulator", help="serve the provider emulator", add_help=False)
    emu.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="end-to-end demo on the sample questions")
    demo.add_argument("--questions", type=int, default=None, help="how many sample questions")

    st = sub.add_parser("status", help="what the worker is doing")
    st.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `.env` feeds modules that read os.environ directly too (breakers, alerts, credits).
    load_dotenv(override=False)
    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own options (argparse REMAINDER would reject them).
        from worker.emulator import main as emulator_main

        return int(emulator_main(argv[1:]))
    args = _parser().parse_args(argv)
    try:
        if args.command == "db":
            from worker import migrate

            if args.db_command == "migrate":
                applied = migrate.migrate()
                print("\n".join(f"applied {n}" for n in applied) or "schema is up to date")
            else:
                for name, state in migrate.status():
                    print(f"{name:40} {state}")
            return 0
        if args.command == "run":
            from worker import rights, runner

            rights.check()

            n = args.processes or settings.worker_processes
            if n > 1:
                return runner.run_processes(n, until_idle=args.until_idle, timeout=args.timeout)
            return asyncio.run(runner.run_async(until_idle=args.until_idle, timeout=args.timeout))
        if args.command == "emulator":
            from worker.emulator import main as emulator_main

            return int(emulator_main(args.args))
        if args.command == "demo":
            from worker import demo

            return int(demo.main(args.questions))
        if args.command == "status":
            from worker import status

            return int(status.main(as_json=args.json))
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg.errors.InsufficientPrivilege as exc:
        from worker import rights
        from worker.database import resolve_database_url

        role = psycopg.conninfo.conninfo_to_dict(resolve_database_url()).get("user") or "?"
        print(f"error: {rights.explain(exc, str(role))}", file=sys.stderr)
        return 2
    return 1
