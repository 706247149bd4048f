"""Postgres-native AI job worker."""

__version__ = "0.1.0"
