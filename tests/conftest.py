"""Shared fixtures live in tests/fixtures/*; each module is a pytest plugin."""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.emulator",
    "tests.fixtures.pipeline",
]
