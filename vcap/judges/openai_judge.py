"""``openai`` judge: any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, DeepSeek, OpenAI).

A batch's calls run concurrently (bounded) through the SDK's async client, which applies the timeout and
retries with backoff on 429, 5xx, timeouts and refused connections. The API key is read from the
environment variable named by ``api_key_env`` at call time; it is never stored on the judge, logged or
written to configs.
"""
from __future__ import annotations

import asyncio
import os

from vcap.judges.base import register_judge
from vcap.judges.llm import LLMJudge


@register_judge("openai")
class OpenAIJudge(LLMJudge):
    """Args:
        model: served model name (e.g. 'Qwen/Qwen2.5-72B-Instruct', 'deepseek-chat').
        base_url: the endpoint, e.g. http://127.0.0.1:8000/v1 for a local vLLM server.
        api_key_env: environment variable holding the key (a local server accepts any value).
        temperature / max_tokens: sampling; temperature 0 by default for reproducible verdicts.
        timeout: seconds per request; max_retries: SDK retries with backoff.
        parse_retries: extra asks when a reply does not parse.
        concurrency: requests in flight at once.
        cache: SQLite file of replies keyed by (model, prompt, sampling); None disables it.
        prompt_file: JSON file overriding the built-in prompt texts (see vcap.judges.prompts).
        retry_temperature: temperature of re-asks under the robust protocol (a greedy re-ask repeats itself).
    """

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 512, timeout: float = 60.0, max_retries: int = 3,
                 parse_retries: int = 2, concurrency: int = 16, cache: str | None = "judge_cache.sqlite",
                 prompt_file: str | None = None, max_events: int = 10, retry_temperature: float = 0.7):
        super().__init__(model, temperature, max_tokens, parse_retries, cache, prompt_file, max_events,
                         retry_temperature)
        self.base_url, self.api_key_env = base_url, api_key_env
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency

    def describe(self):
        return {**super().describe(), "base_url": self.base_url}

    def __repr__(self) -> str:  # no key material, ever
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, requests):
        out: list = [None] * len(requests)

        def keep(i, reply):
            out[i] = reply
        self.stream(requests, keep)
        return out

    def stream(self, requests, on_reply) -> None:
        """Concurrent calls; each reply is handed over the moment it arrives. The request body holds exactly
        the messages and the sampling keys given (official protocols: often none at all)."""
        from openai import AsyncOpenAI

        async def main():
            client = AsyncOpenAI(base_url=self.base_url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                                 timeout=self.timeout, max_retries=self.max_retries)
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(i: int, messages: list[dict], sampling: dict) -> None:
                async with semaphore:
                    try:
                        response = await client.chat.completions.create(model=self.model, messages=messages,
                                                                        **sampling)
                        reply = response.choices[0].message.content or ""
                    except Exception as err:  # reported per request; the SDK already retried
                        reply = err
                on_reply(i, reply)
            try:
                await asyncio.gather(*(one(i, m, s) for i, (m, s) in enumerate(requests)))
            finally:
                await client.close()
        asyncio.run(main())
