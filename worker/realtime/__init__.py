"""The realtime lane: generic ``ai_jobs`` rows drained at provider speed."""
