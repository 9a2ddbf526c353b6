"""Serve stage: OpenAI chat completions over base models and their LoRA adapters.

protocol.py  request/response objects (OpenAI field names) and request validation
engine.py    the engine interface (a vLLM multi-LoRA backend would implement it) and its data types
hf_engine.py the built-in transformers engine: the loop of continuous batching and the streams
scheduler.py waiting requests, fair admission across organisations and keys, deadlines
runner.py    the loaded model and adapter slots: prefill, mixed-adapter decode, load failures
kv_cache.py  the running batch's KV cache: expand, merge, trim (shapes documented)
prefix_cache.py  recent prompts' K/V per adapter: a shared beginning is prefilled once
output.py    per-sequence logits processors, sampling, stops, detokenisation, log-probabilities
lora.py      adapter folders (PEFT + meta.json, template check), adapter LRU, batched LoRA math
sampling.py  penalties, temperature, top_p, seeded generators, log-probabilities
detok.py     incremental text, stop strings, token bytes
limits.py    request bounds (n, max_tokens), per-key concurrency, per-organisation token budgets
service.py   request + resolved model -> ChatCompletion or ChatCompletionChunk stream
router.py    POST /v1/chat/completions (JSON or SSE)
"""
