"""Prompt texts for structured-thinking captioning (our own wording; override via the datamodule)."""
from __future__ import annotations

SYSTEM_PROMPT = "You are a careful video describer."

DEFAULT_PROMPT = (
    "Watch the video, then answer in two parts. "
    "First, inside <think></think>, list every key subject as a JSON array of objects with keys "
    '"subject", "attributes" and "actions" (actions in the order they happen). '
    "Then, inside <answer></answer>, write one fluent paragraph that describes the video."
)

PLAIN_PROMPT = "Describe the video in detail."


def build_messages(prompt: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]})
    return messages
