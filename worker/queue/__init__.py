"""The queue: the Procrastinate app and its tasks, supervised worker processes, and the one
LISTEN connection each process keeps."""
