"""``openai`` judge: any OpenAI-compatible chat endpoint (vLLM, SGLang, llama.cpp server, DeepSeek, OpenAI).

A batch's calls run concurrently (bounded) through the SDK's async client, which applies the timeout and
retries with backoff on 429, 5xx, timeouts and refused connections. The API key is read from the
environment variable named by ``api_key_env`` when the judge first calls the server and kept only inside its
client (reused by later calls; never pickled, logged or written to configs). A ``user:password@`` in ``base_url`` is sent as HTTP basic auth and shown masked
(``vcap.judges.urls``). A reply that is not a chat completion (a proxy's HTML error page with status 200) is a
failed call named by its content type, like a reply that never came.
"""
from __future__ import annotations

import asyncio
import logging
import os
import weakref

from vcap.signals import Interrupted, polled, requested
from vcap.judges.base import register_judge
from vcap.judges.llm import LLMJudge
from vcap.judges.loop import background_loop, close_on_loop, run_on_loop
from vcap.judges.urls import has_literal_password, masked, without_credentials
from vcap.quiet import warn_once

log = logging.getLogger(__name__)
RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")


class NotAChatReply(Exception):
    """The server answered, but not with a chat completion (an HTML error page of a proxy, JSON without choices)."""


def reachability_problem(base_url: str, timeout: float = 5.0, headers: dict[str, str] | None = None,
                         shown: str | None = None) -> str | None:
    """Why nothing answers HTTP at ``base_url`` within ``timeout`` seconds, or None (GET <base_url>/models, the
    route OpenAI-compatible servers list their models on; any status counts as an answer). Credentials in the URL
    go as basic auth (or ``headers`` carry them); the message shows the URL masked (or as ``shown``)."""
    import socket
    import urllib.error
    import urllib.request

    url, auth = without_credentials(base_url)
    headers = {**auth, **(headers or {})}
    shown = shown or masked(base_url)
    try:
        urllib.request.urlopen(urllib.request.Request(url.rstrip("/") + "/models", headers=headers),
                               timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an HTTP status, even 401 or 404: something is serving there
    except (TimeoutError, socket.timeout):
        return f"the judge at {shown} did not answer within {timeout:g} s"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"the judge at {shown} did not answer within {timeout:g} s"
        why = str(reason).replace(base_url, shown)[:120] or type(reason).__name__
        return f"the judge at {shown} is not reachable ({why})"
    return None


def reply_text(raw) -> str:
    """The completion's text from the SDK's raw response, or NotAChatReply saying what came instead (its content
    type and the start of its body), e.g. ``judge reply was not JSON (text/html: '<html>...')``."""
    content_type = (raw.headers.get("content-type") or "no content type").split(";")[0].strip()
    response = raw.parse()
    body = " ".join(str(raw.text).split())[:60]
    if isinstance(response, str):  # the SDK hands over a body that is not JSON as text
        raise NotAChatReply(f"judge reply was not JSON ({content_type}: {body!r})")
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    if message is None:
        raise NotAChatReply(f"judge reply was not a chat completion, no choices[0].message ({content_type}: {body!r})")
    return getattr(message, "content", None) or ""


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
        response_format: how robust-protocol requests ask for JSON that follows the reply's schema: 'auto'
            (OpenAI-style json_schema, as vLLM, SGLang, llama.cpp's llama-server and OpenAI accept; on a 400/422
            the next form), 'json_schema', 'json_object' ({"type": "json_object", "schema": ...}, as
            llama-cpp-python's server accepts) or 'none' (plain text). Official-protocol requests never carry it.
        max_consecutive_failures: stop the run with one line naming ``base_url`` after this many calls in a row
            got no reply (after the client's retries); 0 never stops.
    """

    def __init__(self, model: str, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 512, timeout: float = 60.0, max_retries: int = 3,
                 parse_retries: int = 2, concurrency: int = 16, cache: str | None = "judge_cache.sqlite",
                 prompt_file: str | None = None, max_events: int = 10, retry_temperature: float = 0.7,
                 response_format: str = "auto", max_consecutive_failures: int = 5):
        super().__init__(model, temperature, max_tokens, parse_retries, cache, prompt_file, max_events,
                         retry_temperature, max_consecutive_failures)
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {list(RESPONSE_FORMATS)}, got {response_format!r}")
        # shown everywhere masked; the client gets the URL without credentials and their basic-auth header
        self.base_url, self.api_key_env = masked(base_url), api_key_env
        self._url, self._auth_headers = without_credentials(base_url)
        if has_literal_password(base_url):  # once per URL: the reward and the metric share a judge
            warn_once(log, "the judge URL %s carries its password written out, and run files (config.yaml, "
                      "hparams.yaml, checkpoints) keep the URL as given: write it as ${NAME} (e.g. "
                      "http://user:${JUDGE_PASSWORD}@host/v1) and export NAME, so they keep only the placeholder",
                      self.base_url)
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency
        self.response_format = response_format
        self._async_client: tuple | None = None  # (pid, loop, AsyncOpenAI), made on first call
        self.structured_output = response_format != "none"
        # the forms still to try, best first; 'auto' drops a form the server rejects
        self._forms = {"auto": ["json_schema", "json_object", "none"], "none": ["none"]}.get(
            response_format, [response_format])

    def describe(self):
        return {**super().describe(), "base_url": self.base_url, "response_format": self._forms[0]}

    def source(self) -> str:
        return f"{self.model} @ {self.base_url}"

    def reachability_problem(self, timeout: float = 5.0) -> str | None:
        """None when the server answers HTTP at all (any status: a missing route or key still shows it is up);
        else why not, naming the URL. Checked before a run loads anything."""
        return reachability_problem(self._url, min(timeout, self.timeout), self._auth_headers, self.base_url)

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
        from openai import APIStatusError, AsyncOpenAI

        async def main():
            client = self._client(AsyncOpenAI)
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(i: int, messages: list[dict], sampling: dict) -> None:
                schema = sampling.get("json_schema")
                async with semaphore:
                    while True:
                        form = self._forms[0] if schema else "none"
                        kwargs = {k: v for k, v in sampling.items() if k != "json_schema"}
                        if form == "json_schema":
                            kwargs["response_format"] = {"type": "json_schema", "json_schema": schema}
                        elif form == "json_object":
                            kwargs["response_format"] = {"type": "json_object", "schema": schema["schema"]}
                        try:
                            raw = await client.chat.completions.with_raw_response.create(
                                model=self.model, messages=messages, **kwargs)
                            reply = reply_text(raw)
                        except APIStatusError as err:
                            # 400/422, or a 500 that names the field (llama-cpp-python's server wraps its
                            # validation error): the server does not take this form of response_format
                            rejected = err.status_code in (400, 422) or any(
                                word in str(err) for word in ("response_format", "json_schema"))
                            if form != "none" and self.response_format == "auto" and rejected:
                                if self._forms[0] == form and len(self._forms) > 1:
                                    self._forms.pop(0)  # the server does not take this form: use the next
                                    log.info("judge server rejected response_format %s (%s); trying %s", form,
                                             str(err)[:120], self._forms[0])
                                continue
                            reply = err
                        except Exception as err:  # reported per request; the SDK already retried
                            reply = err
                        break
                on_reply(i, reply)
            tasks = [asyncio.ensure_future(one(i, m, s)) for i, (m, s) in enumerate(requests)]
            try:
                pending = set(tasks)
                while pending:  # woken every 0.25 s so Ctrl-C / SIGTERM stop a run waiting on a hung judge
                    done, pending = await asyncio.wait(pending, timeout=0.25, return_when=asyncio.FIRST_EXCEPTION)
                    for task in done:
                        task.result()  # the circuit breaker's error, raised by on_reply
                    if requested():
                        raise Interrupted(requested())
            finally:
                for task in tasks:
                    task.cancel()
        with polled():  # the loop below stops on a signal itself; the handler raising inside the loop would not
            run_on_loop(main())

    def _client(self, client_class):
        """This judge's client, made on the judge loop (``vcap.judges.loop``) and reused while that loop runs: a new
        one in a forked child or after the loop was replaced, since a client's connections belong to its loop. The
        API key is read from ``api_key_env`` when the client is made."""
        loop = background_loop()
        if self._async_client is None or self._async_client[:2] != (os.getpid(), loop):
            # default headers win over the SDK's own: basic auth from the URL replaces the Bearer key
            client = client_class(base_url=self._url, api_key=os.environ.get(self.api_key_env) or "EMPTY",
                                  timeout=self.timeout, max_retries=self.max_retries,
                                  default_headers=self._auth_headers or None)
            self._async_client = (os.getpid(), loop, client)
            weakref.finalize(self, close_on_loop, client, loop)  # a collected judge leaves no open sockets
        return self._async_client[2]

    def __getstate__(self):  # DDP spawn / deep copies: a client belongs to its process's loop, a copy makes its own
        return {**self.__dict__, "_async_client": None}
