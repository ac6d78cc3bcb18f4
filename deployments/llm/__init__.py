"""The LLM model server's parts: one generation core and the two API halves over it.

``core.GenerationCore`` runs requests on the engine (sampling parameters, context and vocabulary
checks, ``n`` choices, detokenisation, stop strings) and writes every stream the same way;
``chat.ChatHalf`` and ``completions.CompletionHalf`` turn their API's requests into prompts and
the core's output into their API's answers. ``deployments/llm_server.py`` composes them into
``LLMServer``, the class a deployment or a front hosts.
"""
