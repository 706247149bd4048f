"""The batch lane: questions become commentary from several models.

claim (questions -> request rows) -> submit (intents, provider batches created exactly once;
instant models answered by chat calls) -> poll -> ingest (answers written, requests and
questions settled); the tick's steps heal what a crash left. ``defer`` is the one module
that defers its jobs."""
