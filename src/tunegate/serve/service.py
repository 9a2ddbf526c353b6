"""Chat completions: a validated request and a resolved model in, a `ChatCompletion` or a stream of
`ChatCompletionChunk`s out.

Owns what needs the model but not the HTTP layer: rendering the prompt with the base model's own
chat template (`catalog.template.render`, the one place that does it), exact token counts, the
context-length checks, the mapping of OpenAI parameters onto `SamplingParams`, and the OpenAI
chunk sequence (role delta, content deltas, final chunk with `finish_reason`, optional usage
chunk). Does not own authentication, model lookup or SSE framing (`serve/router.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from tunegate.catalog.template import render
from tunegate.errors import InvalidRequestError
from tunegate.ids import new_id
from tunegate.serve.engine import ChoiceOutput, Engine, GenerationRequest, SamplingParams, ServableModel, TokenLogprob
from tunegate.serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    TopLogprob,
)

log = logging.getLogger("tunegate.serve")


def _openai_logprobs(items: list[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=t.token, bytes=t.bytes, logprob=t.logprob,
            top_logprobs=[TopLogprob(token=tok, bytes=raw, logprob=lp) for tok, raw, lp in t.top],
        )
        for t in items
    ]


class ChatService:
    """Turns chat requests into engine requests and engine output into OpenAI objects."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def prepare_sync(self, request: ChatCompletionRequest, model: ServableModel) -> GenerationRequest:
        """Render, count and check the prompt; map the sampling parameters. Raises 400s."""
        if request.model_extra:
            log.info("chat.completions: ignoring unknown fields %s", sorted(request.model_extra))
        self.engine.check_model(model)
        tokenizer = self.engine.tokenizer(model.base)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        text = render(tokenizer, messages, add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        context = model.base.context_length
        n_prompt = len(prompt_ids)
        if n_prompt >= context:
            raise InvalidRequestError(
                f"This model's maximum context length is {context} tokens, but your messages take {n_prompt} tokens "
                "(rendered with the model's chat template). Shorten the messages.",
                param="messages", code="context_length_exceeded",
            )
        wanted = request.requested_max_tokens
        name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        if wanted is not None and wanted > context:
            raise InvalidRequestError(
                f"`{name}` is {wanted}, but this model's context is {context} tokens; ask for at most "
                f"{context - n_prompt} with these messages, or leave it unset.",
                param=name, code="invalid_value",
            )
        if wanted is not None and n_prompt + wanted > context:
            raise InvalidRequestError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{n_prompt + wanted} tokens ({n_prompt} in the messages, {wanted} in the completion). Lower "
                f"`{name}` to at most {context - n_prompt} or shorten the messages.",
                param=name, code="context_length_exceeded",
            )
        params = SamplingParams(
            max_tokens=wanted if wanted is not None else context - n_prompt,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_list,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=bool(request.logprobs),
            top_logprobs=request.top_logprobs or 0,
            ignore_eos=bool(request.ignore_eos),
        )
        return GenerationRequest(model, prompt_ids, params, n=request.n or 1, request_id=new_id("chatcmpl"))

    async def prepare(self, request: ChatCompletionRequest, model: ServableModel) -> GenerationRequest:
        # Rendering and tokenizing a large prompt takes long enough to stall every other client.
        return await asyncio.to_thread(self.prepare_sync, request, model)

    async def create(self, request: ChatCompletionRequest, model: ServableModel) -> ChatCompletion:
        gen = await self.prepare(request, model)
        stream = self.engine.submit(gen)
        texts = [""] * gen.n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(gen.n)]
        finish: list[str] = ["length"] * gen.n
        tokens = [0] * gen.n
        try:
            async for out in stream:
                texts[out.index] += out.text
                logprobs[out.index] += out.logprobs
                tokens[out.index] = out.completion_tokens
                if out.finish_reason:
                    finish[out.index] = out.finish_reason
        finally:
            await stream.aclose()
        choices = [
            Choice(
                index=i,
                message=ChatCompletionMessage(content=texts[i]),
                logprobs=ChoiceLogprobs(content=_openai_logprobs(logprobs[i])) if gen.params.logprobs else None,
                finish_reason=finish[i],
            )
            for i in range(gen.n)
        ]
        return ChatCompletion(id=gen.request_id, model=model.id, choices=choices, usage=self._usage(gen, tokens),
                              system_fingerprint=self._fingerprint(model))

    async def stream(self, request: ChatCompletionRequest, model: ServableModel) -> AsyncIterator[ChatCompletionChunk]:
        """Validate and queue now (so 400/404/429 happen before any byte is sent); then iterate the
        returned chunks. Closing the iterator cancels the generation and frees its batch slot."""
        gen = await self.prepare(request, model)
        stream = self.engine.submit(gen)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return self._chunks(gen, model, stream, include_usage)

    async def _chunks(self, gen: GenerationRequest, model: ServableModel, stream, include_usage: bool):
        created = int(time.time())
        fingerprint = self._fingerprint(model)

        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(id=gen.request_id, created=created, model=model.id, choices=choices,
                                       usage=usage, system_fingerprint=fingerprint)

        tokens = [0] * gen.n
        try:
            for i in range(gen.n):
                yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))])
            async for out in stream:
                out: ChoiceOutput
                tokens[out.index] = out.completion_tokens
                if out.text or out.logprobs:
                    lp = ChoiceLogprobs(content=_openai_logprobs(out.logprobs)) if gen.params.logprobs else None
                    yield chunk([ChunkChoice(index=out.index, delta=ChoiceDelta(content=out.text), logprobs=lp)])
                if out.finish_reason:
                    yield chunk([ChunkChoice(index=out.index, delta=ChoiceDelta(), finish_reason=out.finish_reason)])
            if include_usage:
                yield chunk([], self._usage(gen, tokens))
        finally:
            await stream.aclose()

    @staticmethod
    def _usage(gen: GenerationRequest, tokens: list[int]) -> CompletionUsage:
        prompt = len(gen.prompt_ids)
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=sum(tokens), total_tokens=prompt + sum(tokens))

    @staticmethod
    def _fingerprint(model: ServableModel) -> str:
        # Names the chat template the answer was rendered with.
        return "fp_" + model.base.template_sha256[:12]
