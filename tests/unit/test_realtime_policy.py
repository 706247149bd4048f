"""Pure policy of the realtime lane: backoff, failure handling, history shrinking, prompts,
embedding grouping."""

from __future__ import annotations

import random

import pytest

from worker.errors import ConfigError, ErrorKind, ProviderError
from worker.realtime.claim import first_rows_limit
from worker.realtime.embeddings import FIRST_GROUP_TEXTS, group_jobs, split_first_groups
from worker.realtime.execute import backoff_seconds, outcome_for_error
from worker.realtime.model import Job, RealtimeSettings, Template
from worker.realtime.sessions import build_prompt, shrink

S = RealtimeSettings(backoff_base_seconds=1.0, backoff_max_seconds=30.0, max_attempts=3)


def job(**kw: object) -> Job:
    base: dict[str, object] = {"id": 1, "kind": "chat", "provider": "openai", "model": "m"}
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def err(
    kind: ErrorKind, status: int | None = None, retry_after: float | None = None
) -> ProviderError:
    return ProviderError(
        "x", kind=kind, provider="openai", status_code=status, retry_after=retry_after
    )


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    for n, (lo, hi) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0), 10: (15.0, 30.0)}.items():
        values = [backoff_seconds(n, S, rng=rng) for _ in range(200)]
        assert lo <= min(values) and max(values) <= hi
        assert max(values) - min(values) > (hi - lo) * 0.5  # jittered, not constant


def test_retry_after_wins_over_backoff() -> None:
    assert 7.0 <= backoff_seconds(1, S, retry_after=7.0) <= 7.7
    assert backoff_seconds(1, S, retry_after=999) == 30.0


@pytest.mark.parametrize(
    ("exc", "attempts", "status", "failed_call", "throttle"),
    [
        (err(ErrorKind.RETRYABLE, 500), 0, "retrying", 1, 0),
        (err(ErrorKind.RETRYABLE, 500), 2, "failed", 1, 0),  # third failure of max 3
        (err(ErrorKind.RETRYABLE, 429, 2.0), 2, "retrying", 0, 1),  # 429 never fails a job
        (err(ErrorKind.UNKNOWN), 0, "retrying", 1, 0),
        (err(ErrorKind.INVALID_REQUEST, 400), 0, "failed", 1, 0),
        (err(ErrorKind.CONTENT_REFUSED), 0, "failed", 1, 0),
        (err(ErrorKind.CONTEXT_TOO_LONG, 400), 0, "failed", 1, 0),
        (err(ErrorKind.QUOTA, 429), 0, "pending", 0, 1),  # provider down: wait, unfailed
        (err(ErrorKind.AUTH, 401), 1, "retrying", 0, 1),
        (ConfigError("openai is not configured"), 0, "pending", 0, 1),
        (RuntimeError("bug"), 0, "retrying", 1, 0),
    ],
)
def test_outcome_for_error(
    exc: BaseException, attempts: int, status: str, failed_call: int, throttle: int
) -> None:
    out = outcome_for_error(job(attempts=attempts), exc, S)
    assert (out.status, out.failed_call, out.throttle) == (status, failed_call, throttle)
    assert out.error
    if status in ("retrying", "pending"):
        assert out.delay > 0


def test_429_honours_retry_after() -> None:
    out = outcome_for_error(job(), err(ErrorKind.RETRYABLE, 429, 5.0), S)
    assert 5.0 <= out.delay <= 5.5


def test_history_halves_down_to_the_floor() -> None:
    seq, keep = [], 10
    while keep is not None:
        seq.append(keep)
        keep = shrink(keep, 1)
    assert seq == [10, 5, 2, 1]
    assert shrink(4, 3) == 3 and shrink(3, 3) is None and shrink(0, 0) is None


def test_chat_prompt_has_system_history_explicit_turns_and_user() -> None:
    j = job(
        system_prompt="sys",
        input_text="now?",
        messages=[
            {"role": "system", "content": "extra rules"},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "x" * 50},
        ],
        history=[{"role": "user", "content": "s1"}, {"role": "assistant", "content": "s2"}],
    )
    p = build_prompt(j, None, message_max_chars=10)
    assert p.system == "sys\n\nextra rules"
    assert [m["content"] for m in p.history] == ["s1", "s2", "earlier", "x" * 10]
    msgs = p.messages(keep=1)
    assert msgs == [
        {"role": "system", "content": "sys\n\nextra rules"},
        {"role": "assistant", "content": "x" * 10},
        {"role": "user", "content": "now?"},
    ]
    assert p.messages(keep=0)[1:] == [{"role": "user", "content": "now?"}]


def test_template_prompt_renders_text_and_asks_for_json() -> None:
    t = Template("sentiment", "judge", "Text: {text} {x}", "json", {"type": "object"})
    p = build_prompt(job(kind="sentiment", input_text="gut {ok}"), t, 100)
    assert (p.system, p.user, p.json_output, p.history) == ("judge", "Text: gut {ok} {x}", True, [])


def test_embedding_groups_respect_provider_limit_tokens_and_model() -> None:
    jobs = [job(id=i, kind="embedding", provider="gemini", input_text="t") for i in range(250)]
    jobs += [
        job(id=1000 + i, kind="embedding", provider="gemini", model="other", input_text="t")
        for i in range(3)
    ]
    sizes = sorted(len(g) for g in group_jobs(jobs))
    assert sizes == [3, 50, 100, 100]  # Gemini: 100 per request; models never mix
    big = [
        job(id=i, kind="embedding", input_text="x" * 40_000) for i in range(25)
    ]  # 10k tokens each
    assert [len(g) for g in group_jobs(big)] == [10, 10, 5]


def test_an_idle_embedding_lane_sends_a_small_first_request_then_full_ones() -> None:
    openai = [job(id=i, kind="embedding", input_text="t") for i in range(500)]
    gemini = [
        job(id=1000 + i, kind="embedding", provider="gemini", input_text="t") for i in range(250)
    ]
    groups = group_jobs(openai + gemini)
    # only the idle lane's first group is cut; one extra request, no more
    out = split_first_groups(groups, {"openai:embed"})
    assert [len(g) for g in out if g[0].provider == "openai"] == [FIRST_GROUP_TEXTS, 450]
    assert [len(g) for g in out if g[0].provider == "gemini"] == [100, 100, 50]
    assert out[0][0].id == 0  # the oldest texts go first
    assert sorted(j.id for g in out for j in g) == sorted(j.id for j in openai + gemini)
    # a busy lane, or a group too small to be worth a second request, stays whole
    assert split_first_groups(groups, set()) == groups
    small = group_jobs(openai[: 2 * FIRST_GROUP_TEXTS - 1])
    assert split_first_groups(small, {"openai:embed"}) == small


def test_the_fast_claim_takes_no_more_rows_than_the_fullest_lane_has_room_for() -> None:
    free = {"mock": 11, "mock:embed": 20000, "openai": 55}
    assert first_rows_limit(500, free, 55) == 11
    assert first_rows_limit(5, free, 55) == 5
    assert first_rows_limit(500, {}, 55) == 55  # every lane at the default
    assert first_rows_limit(500, {**free, "mock": 0}, 55) == 0  # a full lane: caps needed
