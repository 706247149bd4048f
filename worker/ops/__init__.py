"""Operations: the periodic tick, provider stops and breakers, alerts, credits, retention,
and what a person reads (metrics, health, status)."""
