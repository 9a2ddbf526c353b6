"""Serve stage: OpenAI chat completions over base models and their LoRA adapters.

protocol.py  request/response objects (OpenAI field names) and request validation
engine.py    the engine interface (a vLLM multi-LoRA backend would implement it) and its data types
hf_engine.py the built-in transformers engine: continuous batching, mixed-adapter batches, queue
lora.py      adapter folders (PEFT + meta.json, template check), adapter LRU, batched LoRA math
sampling.py  penalties, temperature, top_p, seeded generators, log-probabilities
detok.py     incremental text, stop strings, token bytes
service.py   request + resolved model -> ChatCompletion or ChatCompletionChunk stream
router.py    POST /v1/chat/completions (JSON or SSE)
"""
