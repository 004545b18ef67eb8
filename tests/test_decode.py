"""``engine: vcap`` rollouts (prefill once, expanded static cache) against HF ``generate`` and a no-cache sampler.

The SFT'd tiny model writes varied text (a random one repeats one token), so a wrong position, mask or cache row
changes the tokens.
"""
import pytest
import torch

from tests.video_batches import prompt_batch
from vcap.grpo.decode import (DecodeState, Sampling, choose_tokens, draw_noise,
                              processed_scores)
from vcap.grpo.rollout import completion_mask, vision_token_ids
from vcap.grpo.engines import sample_completions
from vcap.grpo.graphs import prefill_once_generate
from vcap.grpo.vision import encode_videos
from vcap.model.loading import load_policy, load_processor

SFT = "vcap-tiny-sft"


@pytest.fixture(scope="module")
def setup():
    processor = load_processor(SFT)
    model = load_policy(SFT).eval()
    return model, processor.tokenizer, prompt_batch(processor)


@pytest.mark.parametrize("with_features", [True, False])
def test_greedy_equals_hf_generate_token_for_token(setup, with_features):
    model, tok, prompts = setup
    hf = sample_completions(model, prompts, 1, 40, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
    features = encode_videos(model, prompts) if with_features else None
    ours = sample_completions(model, prompts, 1, 40, [tok.eos_token_id], tok.pad_token_id, do_sample=False,
                              video_features=features, engine="vcap")
    assert len(set(map(tuple, hf.completion_ids.tolist()))) > 1  # the prompts really lead to different text
    assert torch.equal(ours.completion_ids, hf.completion_ids)
    assert torch.equal(ours.completion_mask, hf.completion_mask)


def reference_sampler(model, prompts, num_generations, max_new_tokens, eos, pad, temperature, top_p, min_new_tokens,
                      repetition_penalty, generator):
    """No cache, no shared prefill, HF's own logits processors: the whole repeated sequence through the model for
    every new token. A sample is argmax(softmax / E) with E ~ Exp(1) drawn per step over (rows, vocab), the draw
    the engine documents, so a seeded generator gives both the same tokens."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor,
                                                        TemperatureLogitsWarper, TopPLogitsWarper)

    g = num_generations
    ids = prompts["input_ids"].repeat_interleave(g, 0)
    mask = prompts["attention_mask"].repeat_interleave(g, 0)
    types = prompts["mm_token_type_ids"].repeat_interleave(g, 0)
    rows = prompts["video_grid_thw"].prod(-1).tolist()
    pixels = torch.cat([c for c in prompts["pixel_values_videos"].split(rows) for _ in range(g)])
    grid = prompts["video_grid_thw"].repeat_interleave(g, 0)
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(repetition_penalty),
                                      MinNewTokensLengthLogitsProcessor(ids.shape[1], min_new_tokens, eos),
                                      SuppressTokensLogitsProcessor(vision_token_ids(model)),
                                      TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)])
    finished = torch.zeros(len(ids), dtype=torch.bool)
    out = []
    for step in range(max_new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, pixel_values_videos=pixels,
                           video_grid_thw=grid, use_cache=False, logits_to_keep=1).logits[:, -1]
        scores = processors(ids, logits.float())
        noise = torch.empty_like(scores).exponential_(generator=generator)
        token = (scores.softmax(-1) / noise).argmax(-1).masked_fill(finished, pad)
        out.append(token)
        finished |= torch.isin(token, torch.tensor(eos))
        if finished.all():
            break
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        types = torch.cat([types, torch.zeros_like(types[:, :1])], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("temperature, top_p, min_new_tokens, penalty", [(0.7, 0.9, 3, 1.3), (1.3, 1.0, 0, 1.0)])
def test_seeded_sampling_equals_a_no_cache_reference_with_hf_processors(setup, temperature, top_p, min_new_tokens,
                                                                       penalty):
    model, tok, prompts = setup
    args = (model, prompts, 2, 12, [tok.eos_token_id], tok.pad_token_id)
    expected = reference_sampler(*args, temperature, top_p, min_new_tokens, penalty, torch.Generator().manual_seed(5))
    features = encode_videos(model, prompts)
    ours = prefill_once_generate(*args, temperature=temperature, top_p=top_p, video_features=features,
                                 suppress_tokens=vision_token_ids(model), min_new_tokens=min_new_tokens,
                                 repetition_penalty=penalty, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, expected)
    # the copies of a prompt are independent samples, not one sample repeated
    assert any(len(set(map(tuple, group.tolist()))) == 2 for group in ours.view(3, 2, -1))


def test_processed_scores_equal_hf_processors_at_non_default_settings():
    """Scores after penalty, suppression, minimum length, temperature and top-p, against HF's processors on
    random logits (before and after the minimum length, with negative and positive scores penalized)."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor, SuppressTokensLogitsProcessor,
                                                        TemperatureLogitsWarper, TopPLogitsWarper)

    gen = torch.Generator().manual_seed(0)
    rows, vocab, prompt_len, eos, never = 5, 40, 6, [3, 7], [11, 12]
    history = torch.randint(0, vocab, (rows, prompt_len + 4), generator=gen)
    logits = torch.randn(rows, vocab, generator=gen) * 3
    for chosen in (2, 4):  # tokens chosen so far: below and at min_new_tokens
        sampling = Sampling(True, 0.6, 0.8, 4, 1.7, pad_token_id=0)
        state = DecodeState.allocate(rows, 16, vocab, sampling, never, eos, torch.device("cpu"))
        ids = history[:, :prompt_len + chosen]
        state.seen.scatter_(1, ids, True)
        state.step.fill_(chosen)
        hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.7),
                                  MinNewTokensLengthLogitsProcessor(prompt_len, 4, eos),
                                  SuppressTokensLogitsProcessor(never), TemperatureLogitsWarper(0.6),
                                  TopPLogitsWarper(0.8)])(ids, logits.clone())
        ours = processed_scores(logits, state, sampling)
        assert torch.equal(torch.isinf(ours), torch.isinf(hf))
        assert torch.allclose(ours[~torch.isinf(ours)], hf[~torch.isinf(hf)], atol=1e-6)
        assert torch.isinf(ours[:, eos]).all() == (chosen < 4)  # EOS banned only before the minimum length
        assert (torch.isinf(ours).sum(1) > len(never)).all()  # top-p removed tokens


def test_exponential_draws_sample_the_softmax():
    """argmax(p / E), E ~ Exp(1), picks token i with probability p_i (chi-square over 20,000 draws)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    sampling = Sampling(True, 1.0, 1.0, 0, 1.0, 0)
    state = DecodeState.allocate(20000, 4, 4, sampling, [], [], torch.device("cpu"))
    draw_noise(state, torch.Generator().manual_seed(1))
    counts = torch.bincount(choose_tokens(probs.log().expand(20000, 4), state, sampling), minlength=4).float()
    expected = probs * 20000
    assert ((counts - expected) ** 2 / expected).sum() < 16.3  # chi-square, 3 dof, p = 0.001


def test_eos_masking_early_stop_min_length_and_budget(setup):
    model, tok, prompts = setup
    first = sample_completions(model, prompts, 1, 2, [tok.eos_token_id], tok.pad_token_id, do_sample=False,
                               engine="vcap").completion_ids[:, 0]
    eos = first.unique().tolist()  # make every prompt's first greedy token an EOS (several EOS ids, as Qwen has)
    stopped = sample_completions(model, prompts, 2, 10, eos, tok.pad_token_id, do_sample=False, engine="vcap")
    assert stopped.completion_ids.shape[1] == 1 and stopped.completion_mask.sum() == 6  # all ended at once
    held = sample_completions(model, prompts, 2, 10, eos, tok.pad_token_id, do_sample=False, engine="vcap",
                              min_new_tokens=4)
    ids, mask = held.completion_ids, held.completion_mask
    assert ids.shape[1] <= 10 and not torch.isin(ids[:, :4], torch.tensor(eos)).any()
    assert torch.equal(mask, completion_mask(ids, eos))
    assert (ids[mask == 0] == tok.pad_token_id).all()
    vision = torch.tensor(vision_token_ids(model))
    assert not torch.isin(ids, vision).any()


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    scores = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(400, 1)
    sampling = Sampling(True, 1.0, 0.6, 0, 1.0, 0)
    state = DecodeState.allocate(400, 4, 3, sampling, [], [], torch.device("cpu"))
    draw_noise(state, torch.Generator().manual_seed(0))
    drawn = choose_tokens(processed_scores(scores, state, sampling), state, sampling)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 alone is short of 0.6; 0.5 + 0.3 reaches it
    greedy = Sampling(False)
    assert choose_tokens(processed_scores(scores[:1], state, greedy), state, greedy).item() == 0


def test_unknown_engine_and_unsupported_options_are_clear_errors(setup):
    model, tok, prompts = setup
    with pytest.raises(ValueError, match="valid"):
        sample_completions(model, prompts, 2, 4, [tok.eos_token_id], tok.pad_token_id, engine="fast")
    with pytest.raises(ValueError, match="top_k"):
        sample_completions(model, prompts, 2, 4, [tok.eos_token_id], tok.pad_token_id, engine="vcap", top_k=5)


def test_repetition_penalty_equals_hf_generate(setup):
    model, tok, prompts = setup
    args = (model, prompts, 1, 30, [tok.eos_token_id], tok.pad_token_id)
    plain = sample_completions(*args, do_sample=False, engine="vcap")
    hf = sample_completions(*args, do_sample=False, repetition_penalty=1.8)
    ours = sample_completions(*args, do_sample=False, engine="vcap", repetition_penalty=1.8)
    assert not torch.equal(plain.completion_ids[:, :hf.completion_ids.shape[1]], hf.completion_ids)  # it bites
    assert torch.equal(ours.completion_ids, hf.completion_ids)


@pytest.mark.traces
def test_compiled_bucketed_decode_equals_the_plain_loop_and_compiles_once_per_bucket(setup):
    """The compiled path (the whole decode step through torch.compile with fullgraph=True, cache length and prompt
    count padded to buckets) on CPU with a tracing-only backend: the same tokens as the plain loop, and a second
    batch with another prompt length in the same buckets compiles nothing new."""
    from tests.video_batches import UNEQUAL
    from vcap.grpo.engines import VcapEngine

    model, tok, prompts = setup
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    engine = VcapEngine(cuda_graph=False, compile=True, compile_backend=counting_backend, length_bucket=256,
                        batch_buckets=[4])
    second = prompt_batch(load_processor(SFT), UNEQUAL[::2], seed=3)
    assert second["input_ids"].shape[1] != prompts["input_ids"].shape[1]
    for batch in (prompts, second):
        args = (model, batch, 2, 12, [tok.eos_token_id], tok.pad_token_id)
        for features in (encode_videos(model, batch), None):  # None: the padded pixels are encoded in the prefill
            plain = VcapEngine(compile=False).generate(*args, do_sample=False, video_features=features)
            fast = engine.generate(*args, do_sample=False, video_features=features)
            assert torch.equal(fast.completion_ids, plain.completion_ids)
            assert torch.equal(fast.completion_mask, plain.completion_mask)
        if batch is prompts:
            compiled = len(graphs)
            assert compiled > 0
    assert len(graphs) == compiled  # 3 and 2 prompts both pad to 4; both prompt lengths + 12 fit in 256


def test_pad_prompts_appends_copies_of_the_last_prompt_with_its_video(setup):
    from vcap.grpo.engines import pad_prompts
    from vcap.grpo.rollout import select

    model, _, prompts = setup
    count = prompts["input_ids"].shape[0]
    features = encode_videos(model, prompts)
    padded, padded_features = pad_prompts(prompts, features, count + 2)
    assert padded["input_ids"].shape[0] == count + 2 and len(padded_features.pooler_output) == count + 2
    for i in range(count + 2):
        source = min(i, count - 1)
        got, want = select(padded, i, i + 1), select(prompts, source, source + 1)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert torch.equal(padded_features.pooler_output[i], features.pooler_output[source])
    same, same_features = pad_prompts(prompts, features, count)
    assert same is prompts and same_features is features  # nothing to pad
    no_pixels = {k: v for k, v in prompts.items() if k != "pixel_values_videos"}
    assert "video_grid_thw" in pad_prompts(no_pixels, None, count + 1)[0]  # mrope positions still need the grid


def test_greedy_under_bf16_autocast_equals_hf_generate(setup):
    """fp32 weights in ``bf16-mixed`` (the full fine-tuning recipe): the prefill leaves fp32 keys and bf16 values,
    and the static cache must hold each in its own dtype."""
    model, tok, prompts = setup
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hf = sample_completions(model, prompts, 1, 24, [tok.eos_token_id], tok.pad_token_id, do_sample=False)
        ours = sample_completions(model, prompts, 1, 24, [tok.eos_token_id], tok.pad_token_id, do_sample=False,
                                  engine="vcap")
    assert torch.equal(ours.completion_ids, hf.completion_ids)


def test_runner_checks_its_options_and_stops_at_the_first_check_after_every_row_ended(setup):
    from vcap.grpo.graphs import DecodeRunner

    model, tok, prompts = setup
    runner = DecodeRunner(cuda_graph=False)
    args = (model, prompts, 2, 120, [tok.eos_token_id], Sampling(do_sample=False, pad_token_id=tok.pad_token_id))
    every = runner.generate(*args, stop_check_interval=1)
    ended = every.shape[1]  # the step of the last row's EOS: checking every step stops right there
    assert ended < 120 and runner.last_stats == {"cuda_graph": 0.0, "decode_steps": float(ended)}
    fourth = runner.generate(*args, stop_check_interval=4)
    assert torch.equal(fourth, every)  # the same tokens, trimmed to the last EOS
    assert runner.last_stats["decode_steps"] == min(120, -(-ended // 4) * 4)  # the first check at or after it
    one = runner.generate(*args[:3], 1, *args[4:])
    assert torch.equal(one, every[:, :1])
    with pytest.raises(ValueError, match=r"^max_new_tokens must be >= 1, got 0$"):
        runner.generate(*args[:3], 0, *args[4:])
    with pytest.raises(ValueError, match=r"^stop_check_interval must be >= 1, got 0$"):
        runner.generate(*args, stop_check_interval=0)


def test_runner_reuses_its_buckets_drops_the_least_recent_and_captures_nothing_on_cpu(setup, caplog):
    from vcap.grpo.graphs import DecodeRunner

    model, tok, prompts = setup
    runner = DecodeRunner(cuda_graph=True, max_buckets=2)  # asks for graphs, but the model is on the CPU
    sampling = Sampling(do_sample=False, pad_token_id=tok.pad_token_id)
    prompt_len = prompts["input_ids"].shape[1]

    def run(new_tokens):
        runner.generate(model, prompts, 2, new_tokens, [tok.eos_token_id], sampling)
        return [key[2] - prompt_len for key in runner.buckets]  # each bucket's cache length, less the prompt

    assert run(8) == [8]
    first = runner.buckets[next(iter(runner.buckets))]
    assert run(8) == [8] and runner.buckets[next(iter(runner.buckets))] is first  # the same buffers again
    assert run(16) == [8, 16]
    assert run(8) == [16, 8]  # used last
    assert run(24) == [8, 24]  # 16, the least recently used, is dropped
    assert runner.buckets[next(iter(runner.buckets))] is first
    assert all(b.graph is None and b.failure is None for b in runner.buckets.values())  # no capture was tried
    assert runner.last_stats["cuda_graph"] == 0.0 and "capture" not in caplog.text


def test_decode_attention_is_swapped_in_for_sdpa_and_eager_only_and_always_restored(setup):
    from vcap.grpo.decode_attention import NAME, decode_attention
    from vcap.grpo.vision import core_model

    model = setup[0]
    config = core_model(model).language_model.config
    before = config._attn_implementation
    assert before in ("sdpa", "eager")
    with decode_attention(model):
        assert config._attn_implementation == NAME
    assert config._attn_implementation == before
    with pytest.raises(RuntimeError, match="boom"), decode_attention(model):
        raise RuntimeError("boom")
    assert config._attn_implementation == before
    config._attn_implementation = "flash_attention_2"  # a kernel with its own numerics: left alone
    try:
        with decode_attention(model):
            assert config._attn_implementation == "flash_attention_2"
    finally:
        config._attn_implementation = before


def test_a_copied_runner_keeps_its_settings_and_starts_without_buffers(setup):
    import pickle

    from vcap.grpo.graphs import DecodeRunner

    model, tok, prompts = setup
    runner = DecodeRunner(cuda_graph=True, max_buckets=3)
    runner.generate(model, prompts, 2, 4, [tok.eos_token_id], Sampling(do_sample=False, pad_token_id=tok.pad_token_id))
    assert runner.buckets and runner.last_stats
    copy = pickle.loads(pickle.dumps(runner))
    assert (copy.cuda_graph, copy.max_buckets, copy.step) == (True, 3, runner.step)
    assert (len(copy.buckets), copy.pool, copy.last_stats) == (0, None, {})
    assert len(runner.buckets) == 1  # the original keeps its buffers
