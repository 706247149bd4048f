"""``python -m worker``: the command surface.

Set-up mistakes (no database, a malformed DATABASE_URL, missing privileges, an unmigrated or
drifted schema, an invalid setting) print one line that names the fix and exit 2, without a
traceback; ``--debug`` adds the traceback. See :mod:`worker.preflight`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
from typing import Any

import psycopg
import psycopg.errors
from dotenv import dotenv_values

EXIT_SETUP = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
A Postgres-native AI job worker: rows in your tables become batch and realtime calls to
OpenAI, Gemini, Mistral and OpenAI-compatible providers; results are written back.

`python -m worker COMMAND --help` shows a command's options.
"""

EPILOG = """\
environment (or .env in the current directory; an empty value means unset):
  DATABASE_URL        postgresql://user:password@host:5432/dbname
                      (unset: 127.0.0.1:5432 when a server answers, else an embedded
                      Postgres under .data/)
  OPENAI_API_KEY, GEMINI_API_KEY, MISTRAL_API_KEY, OPENROUTER_API_KEY,
  PERPLEXITY_API_KEY, DEEPSEEK_API_KEY
                      provider keys (unset: that provider is not called)
  OPENAI_BASE_URL, GEMINI_BASE_URL, MISTRAL_BASE_URL, ...
                      point providers at the emulator
                      (`python -m worker emulator --print-env` prints them all)
  WORKER_PROCESSES    worker processes of `run` (default 1)
  METRICS_PORT        serve /metrics, /health, /ready (default unset: off)
  LOG_LEVEL, LOG_FORMAT
                      INFO, text (default)
  .env.example lists every variable with its default and meaning.

exit codes: 0 ok, 1 failed, 2 set-up error (one line naming the fix), 130 interrupted.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Plain text as written, options with their defaults."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worker",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of a set-up error too (also accepted after the command)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 88),
            epilog=EPILOG,
            formatter_class=_Formatter,
        )

    db = command(
        "db",
        "`db migrate` applies the schema (the only DDL); `db status` checks it",
        "Apply or inspect the database schema.",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    db_sub.add_parser(
        "migrate",
        help="apply Procrastinate's schema, then worker/schema/*.sql in order",
        description=textwrap.fill(
            "Apply what is missing: Procrastinate's schema, then the files of "
            "worker/schema/ in name order, each in its own transaction. Safe to run again.",
            88,
        ),
        formatter_class=_Formatter,
    )
    db_sub.add_parser(
        "status",
        help="list migrations and check that every object they created exists",
        description=textwrap.fill(
            "List applied and pending migrations; report objects the migrations created "
            "that are gone (schema drift). Exit 1 when a migration is pending, 2 when "
            "objects are missing.",
            88,
        ),
        formatter_class=_Formatter,
    )

    run = command(
        "run",
        "run worker processes until stopped (Ctrl-C or SIGTERM)",
        "Run worker processes: submit, poll, realtime drain and maintenance queues. "
        "Waits for the database when it is not reachable yet; Ctrl-C or SIGTERM stops "
        "(running jobs finish).",
    )
    run.add_argument(
        "--until-idle", action="store_true", help="exit once nothing is pending, claimed or due"
    )
    run.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes (default: WORKER_PROCESSES, which defaults to 1)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds (default: no limit)",
    )

    command(
        "emulator",
        "serve the built-in provider emulator: no keys, no cost (`emulator --help`)",
        "Serve the built-in provider emulator; `python -m worker emulator --help` lists "
        "its options.",
    ).add_argument("args", nargs=argparse.REMAINDER, help="the emulator's own options")

    demo = command(
        "demo",
        "end-to-end demo on the sample questions (what `make demo` runs)",
        "Create the database ai_worker_demo (or use DEMO_DATABASE_URL), migrate it, start the "
        "emulator when no API key is set, insert the sample questions, run a worker until "
        "idle and show the results.",
    )
    demo.add_argument(
        "--questions",
        type=int,
        default=None,
        help="how many sample questions (default: all of them)",
    )

    psql = db_sub.add_parser(
        "psql",
        help="open psql on the worker's database (the embedded one too)",
        description=textwrap.fill(
            "Open psql on the database the worker uses (DATABASE_URL, else 127.0.0.1:5432, "
            "else the embedded Postgres, started for as long as psql runs), or on DBNAME on "
            "the same server, e.g. `python -m worker db psql ai_worker_demo` after the demo. "
            "Uses the psql on PATH, else the one shipped in the pgserver wheel.",
            88,
        ),
        formatter_class=_Formatter,
    )
    psql.add_argument("dbname", nargs="?", default=None, help="another database on that server")

    st = command(
        "status",
        "what the worker is doing: questions, jobs, batches, spend, errors",
        "What the worker is doing, read from the database.",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def load_env_file(path: str = ".env") -> None:
    """Export the non-empty values of ``.env`` that the environment does not set already
    (``KEY=`` means unset, as for the settings), so child processes and the libraries that
    read the process environment themselves (httpx: proxy and CA variables) see them too."""
    if not os.path.isfile(path):
        return
    for key, value in dotenv_values(path).items():
        if value is not None and value.strip() and key not in os.environ:
            os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv and argv[:1] != ["emulator"]
    if debug:
        argv = [a for a in argv if a != "--debug"]
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `status | head`: the reader went away; not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        line = _explain(exc)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        return EXIT_SETUP


def _explain(exc: BaseException) -> str | None:
    """One line for a set-up error (or its cause), None for anything else (a bug)."""
    from pydantic import ValidationError

    from worker.errors import WorkerError
    from worker.preflight import explain

    url = _configured_url()
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        e = exc.errors()[0]
        name = "_".join(str(x) for x in e["loc"]).upper()
        return (
            f"invalid setting {name}={e.get('input')!r}: {e['msg']}; "
            "fix or empty it in .env or the environment (.env.example lists the defaults)"
        )
    denied = exc if isinstance(exc, psycopg.errors.InsufficientPrivilege) else exc.__cause__
    if isinstance(denied, psycopg.errors.InsufficientPrivilege) and _command != ["db", "migrate"]:
        # a runtime role without its grants: the owner's one statement (worker.rights)
        from worker import rights

        role = psycopg.conninfo.conninfo_to_dict(url).get("user") if url else None
        return str(rights.explain(denied, str(role or "?")))
    cause = exc.__cause__
    if isinstance(exc, WorkerError) and cause is not None:
        line = explain(cause, url)
        if line is not None:
            return line
    line = explain(exc, url)
    if line is None and isinstance(exc, WorkerError):
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    return line


def _configured_url() -> str | None:
    """DATABASE_URL for an error message; None when it cannot be read (invalid settings)."""
    try:
        from worker.database import configured_database_url

        return configured_database_url()
    except Exception:
        return None


_command: list[str] = []  # the command being run, for _explain


def _main(argv: list[str]) -> int:
    _command[:] = [a for a in argv if not a.startswith("-")][:2]
    load_env_file()
    from worker import logs
    from worker.config import get_settings

    settings = get_settings()
    logs.setup(settings.log_level, settings.log_format)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own options (argparse REMAINDER would reject them).
        from worker.emulator import main as emulator_main

        return int(emulator_main(argv[1:]))
    args = _parser().parse_args(argv)
    if args.command == "db":
        if args.db_command == "psql":
            return _psql(args.dbname)
        return _db(args.db_command)
    if args.command == "run":
        return _run(args, settings.worker_processes)
    if args.command == "demo":
        from worker import demo

        return int(demo.main(args.questions))
    if args.command == "status":
        from worker import migrate
        from worker.ops import status

        migrate.check_schema(_database_url())
        return int(status.main(as_json=args.json))
    return 1


def _database_url() -> str:
    """The database URL, validated, for a command that needs the schema."""
    from worker import preflight
    from worker.database import configured_database_url, resolve_database_url

    raw = configured_database_url()
    if raw:
        preflight.validate_url(raw)
    url = resolve_database_url()
    preflight.validate_url(url)
    return url


def _db(command: str) -> int:
    from worker import migrate

    url = _database_url()
    if command == "migrate":
        applied = migrate.migrate(url)
        print("\n".join(f"applied {n}" for n in applied), end="\n" if applied else "")
        if migrate.missing_objects(url):
            migrate.check_schema(url)  # raises: drift that re-running files cannot repair
        print("schema is up to date")
        return 0
    states = migrate.status(url)
    for name, state in states:
        print(f"{name:40} {state}")
    missing = migrate.missing_objects(url)
    for obj in missing:
        print(f"{'MISSING ' + obj:40} created by an applied migration, gone from the database")
    pending = sum(1 for _n, s in states if s == "pending")
    if missing:
        migrate.check_schema(url)  # one line naming the fix, exit 2
    if pending:
        print(f"{pending} pending: run `python -m worker db migrate`")
        return 1
    print("schema is up to date and intact")
    return 0


def _psql(dbname: str | None) -> int:
    import shutil
    import subprocess

    from worker.database import with_database
    from worker.errors import SetupError

    url = _database_url()
    if dbname:
        url = with_database(url, dbname)
    exe = shutil.which("psql")
    if exe is None:
        try:
            import pgserver

            bundled = os.path.join(os.path.dirname(pgserver.__file__), "pginstall", "bin", "psql")
            exe = bundled if os.path.exists(bundled) else None
        except ImportError:
            exe = None
    if exe is None:
        raise SetupError(
            "psql is not installed: install the PostgreSQL client (e.g. postgresql-client)"
        )
    import signal

    # Ctrl-C belongs to psql (it cancels the running query), not to us
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call([exe, url])
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(args: Any, default_processes: int) -> int:
    import asyncio

    from worker.queue import runner

    url = _database_url()
    runner.wait_for_database(url)  # Ctrl-C while waiting: KeyboardInterrupt, exit 130
    from worker import migrate, rights

    rights.check(url)  # a runtime role lacking its grants: one line, the grant to run
    migrate.check_schema(url)
    n = args.processes or default_processes
    if n > 1:
        return runner.run_processes(n, until_idle=args.until_idle, timeout=args.timeout)
    return asyncio.run(runner.run_async(until_idle=args.until_idle, timeout=args.timeout))
