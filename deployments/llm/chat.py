"""The chat half of the LLM model server: chat completions (and the chat prompt the tokenizer
route renders) over the generation core."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncIterator

from deployments import protocol, tools
from deployments.engines.base import SamplingParams, TokenLogprob
from deployments.errors import invalid
from deployments.llm.core import GenerationCore, Tally
from deployments.protocol import ChatCompletionRequest


class ChatHalf:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        prompt, params, tool_names = self._prepare(req)
        rid = protocol.new_id("chatcmpl")
        out = await self.core.collect(rid, prompt, params, req.stop_list, req.n or 1, self.core.lora(req.model))
        choices = []
        for i, text in enumerate(out.texts):
            content, calls = tools.parse(text, tool_names) if tool_names else (text, [])
            choices.append(
                protocol.chat_choice(
                    i,
                    content if content or not calls else None,
                    out.finishes[i],
                    self._logprobs(out.logprobs[i]) if req.logprobs else None,
                    [c.as_dict() for c in calls],
                    req.uses_functions,
                )
            )
        return protocol.chat_completion(rid, protocol.now(), req.model, choices, protocol.usage(len(prompt), out.produced))

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[str]:
        prompt, params, tool_names = self._prepare(req)  # a bad request raises at the first message
        rid, created = protocol.new_id("chatcmpl"), protocol.now()
        tally = Tally(len(prompt))

        def chunk(choices: list, usage: dict[str, int] | None = None) -> dict[str, Any]:
            return protocol.chat_chunk(rid, created, req.model, choices, usage)

        body = self._chunks(req, rid, prompt, params, tool_names, tally, chunk)
        usage_chunk = (lambda usage: chunk([], usage)) if req.include_usage else None
        role = chunk([protocol.chat_chunk_choice(i, {"role": "assistant", "content": ""}) for i in range(req.n or 1)])
        async with aclosing(self.core.sse_stream(body, tally, usage_chunk, lead=role)) as messages:
            async for message in messages:
                yield message

    async def _chunks(self, req, rid, prompt, params, tool_names, tally: Tally, chunk) -> AsyncIterator[dict[str, Any]]:
        """The stream's chunks after the role chunk, up to each choice's finish reason."""
        n = req.n or 1
        # with tools, text that may be a call is held back until it can be parsed
        splitters = [tools.StreamSplitter(tool_names) for _ in range(n)] if tool_names else None
        async with aclosing(self.core.choices(rid, prompt, params, req.stop_list, n, self.core.lora(req.model))) as deltas:
            async for d in deltas:
                tally.completion_tokens += len(d.token_ids)
                lp = self._logprobs(d.logprobs) if req.logprobs else None
                text = splitters[d.index].feed(d.text) if splitters else d.text
                if text or lp:
                    yield chunk([protocol.chat_chunk_choice(d.index, {"content": text}, None, lp)])
                if not d.finish_reason:
                    continue
                finish = d.finish_reason
                if splitters:
                    rest, calls = splitters[d.index].finish()
                    if rest:
                        yield chunk([protocol.chat_chunk_choice(d.index, {"content": rest})])
                    if calls:
                        for delta in protocol.call_deltas([c.as_dict() for c in calls], req.uses_functions):
                            yield chunk([protocol.chat_chunk_choice(d.index, delta)])
                        finish = protocol.calls_finish_reason(req.uses_functions)
                yield chunk([protocol.chat_chunk_choice(d.index, {}, finish)])

    def _prepare(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingParams, set[str] | None]:
        """Prompt, engine parameters, and the names of the tools the answer may call (None: no
        tools; the answer is plain text)."""
        use_tools = bool(req.tools) and req.tool_choice != "none"
        prompt = self.render(req.messages, req.tool_dicts if use_tools else None)
        max_param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        params = self.core.sampling(req, len(prompt), req.max_new_tokens, max_param, "messages")
        if req.logprobs:
            params.logprobs = req.top_logprobs or 0
        if not use_tools:
            if req.json_schema is not None:
                params.json_schema = self.core.check_structured(req.json_schema, "response_format")
            return prompt, params, None
        named = req.tool_choice.function.name if isinstance(req.tool_choice, protocol.NamedToolChoice) else None
        if named is not None or req.tool_choice == "required":  # the answer is constrained to a call
            schema = tools.call_schema(req.tool_dicts, named, req.parallel_tool_calls is not False)
            params.json_schema = self.core.check_structured(schema, req.param_name("tool_choice"))
        return prompt, params, {t.function.name for t in req.tools}

    def render(self, messages: list, tool_dicts: list[dict[str, Any]] | None) -> list[int]:
        """The prompt for the assistant's next turn: the chat template over the messages, with
        the tools (in the template's own terms where it knows tools, else as a system section)."""
        tokenizer = self.core.tokenizer
        native = bool(tool_dicts) and tokenizer.supports_tools
        rendered = _template_messages(messages, native)
        if tool_dicts and not native:
            section = tools.system_prompt(tool_dicts)
            if rendered[0]["role"] == "system":
                rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + section}
            else:
                rendered.insert(0, {"role": "system", "content": section})
        try:
            return tokenizer.chat_prompt(rendered, tool_dicts if native else None)
        except Exception as exc:  # a template that rejects the conversation (e.g. role order)
            raise invalid(f"The model's chat template rejected these messages: {exc}", "messages") from exc

    def _logprobs(self, items: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        token_text = self.core.tokenizer.token_text

        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return [
            {**entry(item.token_id, item.logprob), "top_logprobs": [entry(t, lp) for t, lp in item.top]}
            for item in items or []
        ]


def _template_messages(messages: list, native_tools: bool) -> list[dict[str, Any]]:
    """The conversation as chat-template messages. Earlier tool calls and their results are
    passed in the template's own terms where it knows tools, else written as text."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        message: dict[str, Any] = {"role": role, "content": protocol.message_text(m.content)}
        calls = getattr(m, "tool_calls", None)
        if calls and native_tools:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": tools.arguments_value(c.function.arguments)}}
                for c in calls
            ]
        elif calls:
            written = "\n".join(tools.call_text(c.function.name, c.function.arguments) for c in calls)
            message["content"] = (message["content"] + "\n" if message["content"] else "") + written
        if role == "tool" and native_tools:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out
