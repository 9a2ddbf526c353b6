"""Chat completions: a validated request and a resolved model in, a `ChatCompletion` or a stream of
`ChatCompletionChunk`s out.

Owns what needs the model but not the HTTP layer: rendering the prompt with the base model's own
chat template (`catalog.template.render`, the one place that does it), exact token counts, the
context-length checks, the mapping of OpenAI parameters onto `SamplingParams`, applying the
admission limits (`serve/limits.py`: bounds, per-key concurrency, per-organisation tokens) around
each generation, and the OpenAI chunk sequence (role delta, content deltas, final chunk with
`finish_reason`, optional usage chunk). Does not own authentication, model lookup or SSE framing
(`serve/router.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from tunegate.catalog.template import render, with_tools
from tunegate.errors import InvalidRequestError
from tunegate.ids import new_id
from tunegate.serve.engine import ChoiceOutput, Engine, GenerationRequest, SamplingParams, ServableModel, TokenLogprob
from tunegate.serve.limits import Caller, ChatLimits, Lease
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
    NamedToolChoice,
    TopLogprob,
    check_supported,
)
from tunegate.serve.tools import ToolCallStream, parse_tool_calls

log = logging.getLogger("tunegate.serve")


def tools_active(request: ChatCompletionRequest) -> bool:
    """Whether the answer is parsed for tool calls (tools given and `tool_choice` is not "none")."""
    return bool(request.tools) and request.tool_choice != "none"


def constraints(request: ChatCompletionRequest, tokenizer, vocab_size: int) -> tuple:
    """The logits-processor factories a request needs: `logit_bias`, then one grammar (tool calls,
    else `response_format`). Compiled here so a bad schema is a 400 before anything is queued."""
    from tunegate.serve import structured

    out: list = []
    if request.logit_bias:
        out.append(structured.logit_bias(request.logit_bias, vocab_size))
    fmt = request.response_format
    grammar = schema = None
    if fmt is not None and fmt.type != "text":
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
        schema = schema if schema is not None else {"type": "object"}
        grammar = structured.check_schema(
            schema,
            tokenizer,
            param="response_format.json_schema.schema",
            strict=fmt.type == "json_schema" and bool(fmt.json_schema.strict),
        )
    if request.tools:
        choice = request.tool_choice or "auto"
        mode = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        if mode != "none":
            grammar = structured.tool_grammar(
                [t.model_dump(exclude_none=True) for t in request.tools],
                tokenizer,
                mode=mode,
                parallel=request.parallel_tool_calls is not False,
                text_schema=schema,
            )
    if grammar is not None:
        from tunegate.catalog.features import template_features

        eot = template_features(tokenizer).eot_token_id  # the template's end of turn ends an answer too
        eos = tuple(i for i in {tokenizer.eos_token_id, eot} if i is not None)
        out.append(structured.GrammarProcessorFactory(grammar, tokenizer, eos))
    return tuple(out)


def _openai_logprobs(items: list[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=t.token,
            bytes=t.bytes,
            logprob=t.logprob,
            top_logprobs=[TopLogprob(token=tok, bytes=raw, logprob=lp) for tok, raw, lp in t.top],
        )
        for t in items
    ]


class ChatService:
    """Turns chat requests into engine requests and engine output into OpenAI objects."""

    def __init__(self, engine: Engine, limits: ChatLimits | None = None):
        self.engine = engine
        self.limits = limits  # None: no bounds or budgets (in-process use: benchmarks, tests)

    def prepare_sync(
        self, request: ChatCompletionRequest, model: ServableModel, caller: Caller | None = None
    ) -> GenerationRequest:
        """Render, count and check the prompt; map the sampling parameters. Raises 400s."""
        check_supported(request)
        if request.model_extra:
            log.info("chat.completions: ignoring unknown fields %s", sorted(request.model_extra))
        self.engine.check_model(model)
        tokenizer = self.engine.tokenizer(model.base)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
        text = render(tokenizer, with_tools(messages, tools), add_generation_prompt=True)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        context = model.base.context_length
        n_prompt = len(prompt_ids)
        if n_prompt >= context:
            raise InvalidRequestError(
                f"This model's maximum context length is {context} tokens, but your messages take {n_prompt} tokens "
                "(rendered with the model's chat template). Shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        wanted = request.requested_max_tokens
        name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        if self.limits is not None:
            self.limits.check_request(request.n or 1, wanted, name)
        if wanted is not None and wanted > context:
            raise InvalidRequestError(
                f"`{name}` is {wanted}, but this model's context is {context} tokens; ask for at most "
                f"{context - n_prompt} with these messages, or leave it unset.",
                param=name,
                code="invalid_value",
            )
        if wanted is not None and n_prompt + wanted > context:
            raise InvalidRequestError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{n_prompt + wanted} tokens ({n_prompt} in the messages, {wanted} in the completion). Lower "
                f"`{name}` to at most {context - n_prompt} or shorten the messages.",
                param=name,
                code="context_length_exceeded",
            )
        default = context - n_prompt
        if self.limits is not None:
            default = min(default, self.limits.max_output_tokens)
        params = SamplingParams(
            max_tokens=wanted if wanted is not None else default,
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
        processors = constraints(request, tokenizer, len(tokenizer))
        return GenerationRequest(
            model,
            prompt_ids,
            params,
            n=request.n or 1,
            request_id=new_id("chatcmpl"),
            org_id=caller.org_id if caller else "",
            key_id=caller.key_id if caller else "",
            logits_processors=processors,
        )

    async def prepare(
        self, request: ChatCompletionRequest, model: ServableModel, caller: Caller | None = None
    ) -> GenerationRequest:
        # Rendering and tokenizing a large prompt takes long enough to stall every other client.
        return await asyncio.to_thread(self.prepare_sync, request, model, caller)

    def _start(self, gen: GenerationRequest, caller: Caller | None, request: ChatCompletionRequest):
        """Take the caller's share of the limits, then queue: (engine stream, lease or None)."""
        lease: Lease | None = None
        if self.limits is not None and caller is not None:
            name = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            lease = self.limits.acquire(caller, len(gen.prompt_ids) + gen.n * gen.params.max_tokens, name)
        try:
            return self.engine.submit(gen), lease
        except BaseException:
            if lease is not None:
                lease.release(0)
            raise

    async def create(
        self, request: ChatCompletionRequest, model: ServableModel, caller: Caller | None = None
    ) -> ChatCompletion:
        """The whole completion. Cancelling this coroutine (a client that went away) frees the batch slots."""
        gen = await self.prepare(request, model, caller)
        stream, lease = self._start(gen, caller, request)
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
            if lease is not None:
                lease.release(len(gen.prompt_ids) + sum(tokens))
        choices = []
        for i in range(gen.n):
            message = ChatCompletionMessage(content=texts[i])
            if tools_active(request):
                message.content, calls = parse_tool_calls(texts[i])
                if calls:
                    message.tool_calls = calls
                    finish[i] = "tool_calls" if finish[i] == "stop" else finish[i]
            choices.append(
                Choice(
                    index=i,
                    message=message,
                    finish_reason=finish[i],
                    logprobs=ChoiceLogprobs(content=_openai_logprobs(logprobs[i])) if gen.params.logprobs else None,
                )
            )
        return ChatCompletion(
            id=gen.request_id,
            model=model.id,
            choices=choices,
            usage=self._usage(gen, tokens),
            system_fingerprint=self._fingerprint(model),
        )

    async def stream(
        self, request: ChatCompletionRequest, model: ServableModel, caller: Caller | None = None
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Validate and queue now (so 400/404/429 happen before any byte is sent); then iterate the
        returned chunks. Closing the iterator cancels the generation and frees its batch slot."""
        gen = await self.prepare(request, model, caller)
        stream, lease = self._start(gen, caller, request)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        return self._chunks(gen, model, stream, include_usage, tools_active(request), lease)

    async def _chunks(
        self,
        gen: GenerationRequest,
        model: ServableModel,
        stream,
        include_usage: bool,
        tools: bool = False,
        lease: Lease | None = None,
    ):
        created = int(time.time())
        fingerprint = self._fingerprint(model)

        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=gen.request_id,
                created=created,
                model=model.id,
                choices=choices,
                usage=usage,
                system_fingerprint=fingerprint,
            )

        tokens = [0] * gen.n
        parsers = [ToolCallStream() for _ in range(gen.n)] if tools else None
        try:
            for i in range(gen.n):
                yield chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""))])
            async for out in stream:
                out: ChoiceOutput
                tokens[out.index] = out.completion_tokens
                finish = out.finish_reason
                if parsers is not None:  # tool-call mode: text becomes content or tool-call deltas
                    parser = parsers[out.index]
                    pieces = parser.feed(out.text) if out.text else []
                    if finish and parser.mode is None and parser.buf:  # ended on a prefix of a call opener
                        pieces.append(parser.buf)
                    for piece in pieces:
                        delta = (
                            ChoiceDelta(content=piece) if isinstance(piece, str) else ChoiceDelta(tool_calls=[piece])
                        )
                        yield chunk([ChunkChoice(index=out.index, delta=delta)])
                    if finish == "stop" and parser.complete:
                        finish = "tool_calls"
                elif out.text or out.logprobs:
                    lp = ChoiceLogprobs(content=_openai_logprobs(out.logprobs)) if gen.params.logprobs else None
                    yield chunk([ChunkChoice(index=out.index, delta=ChoiceDelta(content=out.text), logprobs=lp)])
                if finish:
                    yield chunk([ChunkChoice(index=out.index, delta=ChoiceDelta(), finish_reason=finish)])
            if include_usage:
                yield chunk([], self._usage(gen, tokens))
        finally:
            await stream.aclose()
            if lease is not None:
                lease.release(len(gen.prompt_ids) + sum(tokens))

    @staticmethod
    def _usage(gen: GenerationRequest, tokens: list[int]) -> CompletionUsage:
        prompt = len(gen.prompt_ids)
        return CompletionUsage(prompt_tokens=prompt, completion_tokens=sum(tokens), total_tokens=prompt + sum(tokens))

    @staticmethod
    def _fingerprint(model: ServableModel) -> str:
        # Names the chat template the answer was rendered with.
        return "fp_" + model.base.template_sha256[:12]
