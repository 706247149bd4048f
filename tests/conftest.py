"""Shared fixtures live in tests/fixtures/*; each module is a pytest plugin.

The suite is safe on a shared server: databases carry a run-unique name and only those are
dropped (tests/fixtures/database.py); every temporary file of the run, including those of
the worker and emulator processes it starts (they inherit TMPDIR), goes into one private
directory that is removed when the run ends, so nothing is left in /tmp even by a worker a
test SIGKILLs in the middle of a download.
"""

import atexit
import os
import shutil
import signal
import tempfile
from types import FrameType

_RUN_TMP = tempfile.mkdtemp(prefix="aiw-test-")
os.environ["TMPDIR"] = _RUN_TMP
tempfile.tempdir = None  # gettempdir() reads TMPDIR again
atexit.register(shutil.rmtree, _RUN_TMP, True)


def _terminated(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (a CI timeout, `kill`): stop like Ctrl-C, so fixtures tear down and the
    # run's databases and temp directory are removed instead of left on the server.
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _terminated)

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.emulator",
    "tests.fixtures.pipeline",
    "tests.fixtures.settings",
]
