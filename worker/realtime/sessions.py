"""Conversation context: which messages a chat job sends, and how a context-length error
shrinks them.

A chat job's prompt is: its system prompt, then its *history* - the last K messages of its
session (``ai_chat_messages``, each cut to ``message_max_chars``) followed by any explicit
``messages`` the caller gave before the final user turn - and finally the user turn
(``input_text``, or the last user message of ``messages``).

On a context-length error the history is halved (10 → 5 → 2 → 1) down to
``context_floor`` and the call repeated at once; only when the history cannot shrink further
does the job fail with ``context_too_long``. The system prompt and the user turn are never
dropped: without them the answer would be about something else. Halving (rather than dropping
one message at a time) bounds the extra calls to log2(K).
"""

from __future__ import annotations

from worker.providers.base import Prompt  # re-exported: the realtime lane builds it
from worker.realtime.model import KIND_CHAT, KIND_COMPLETION, Job, Template


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def build_prompt(job: Job, template: Template | None, message_max_chars: int) -> Prompt:
    """The prompt of a chat, completion or template job (embeddings have none)."""
    if template is not None:
        return Prompt(
            system=template.system_prompt or job.system_prompt or None,
            history=[],
            user=template.render(job.input_text or ""),
            json_output=template.output == "json",
            json_schema=template.json_schema,
            max_output_tokens=template.max_output_tokens,
            temperature=template.temperature,
        )
    explicit = list(job.messages or [])
    system = job.system_prompt
    # System messages of the explicit list join the system prompt (one system turn); the
    # conversation turns are context and are cut to message_max_chars each.
    systems = [m["content"] for m in explicit if m["role"] == "system"]
    raw_turns = [m for m in explicit if m["role"] != "system"]
    if systems:
        system = "\n\n".join([s for s in (system, *systems) if s])
    if job.input_text is not None:
        user = job.input_text
    elif raw_turns and raw_turns[-1]["role"] == "user":
        user = raw_turns.pop()["content"]  # the question itself is never cut
    else:
        user = ""
    turns = [
        {"role": m["role"], "content": truncate(m["content"], message_max_chars)} for m in raw_turns
    ]
    history = list(job.history) if job.kind == KIND_CHAT else []
    if job.kind in (KIND_CHAT, KIND_COMPLETION):
        history.extend(turns)
    return Prompt(system=system or None, history=history, user=user)


def shrink(keep: int, floor: int) -> int | None:
    """The next, halved history size after a context-length error; None if at the floor."""
    if keep <= floor or keep <= 0:
        return None
    return max(floor, keep // 2)
