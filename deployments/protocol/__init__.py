"""The OpenAI wire protocol, one module per API (request models, with the spec's names, types and
bounds), plus the pieces they share, the validation-error translation, the response builders and
the response schemas of the OpenAPI document.

Request models mirror the official spec (``CreateChatCompletionRequest``, ``CreateCompletionRequest``,
``CreateEmbeddingRequest``, ``CreateTranscriptionRequest``, ``CreateTranslationRequest``,
``CreateResponse``): unknown fields are rejected (OpenAI does the same), and fields the spec defines
that this server cannot honour are rejected with a 400 naming them rather than ignored. Fields
marked *extra* are local extensions that vLLM's server also accepts. Responses are plain dicts
(``builders.py``); their shapes are checked against the spec in ``tests/test_spec_subset.py`` and
the whole-graph tests (``tests/spec.py``).

Every name is importable from here (``from deployments.protocol import ChatCompletionRequest``).
The package imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from deployments.protocol.common import (  # noqa: F401
    MAX_EMBEDDING_INPUTS,
    MAX_N,
    MAX_STOP,
    RequestModel,
    SamplingFields,
    Stop,
    StreamOptions,
)
from deployments.protocol.messages import (  # noqa: F401
    AssistantMessage,
    ChatMessage,
    Content,
    FUNCTION_NAME,
    FunctionCall,
    FunctionMessage,
    SystemMessage,
    TextPart,
    ToolCallIn,
    ToolMessage,
    UserMessage,
    message_text,
    with_tool_calls,
)
from deployments.protocol.tools import (  # noqa: F401
    ANY_JSON_OBJECT,
    FunctionDefinition,
    FunctionName,
    FunctionSpec,
    FunctionTool,
    JsonObjectFormat,
    JsonSchema,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    NamedToolChoice,
    ResponseFormat,
    TextFormat,
    ToolChoice,
    check_json_schema,
    tool_dicts,
)
from deployments.protocol.chat import (  # noqa: F401
    ChatCompletionRequest,
)
from deployments.protocol.completions import (  # noqa: F401
    CompletionRequest,
    Prompt,
)
from deployments.protocol.embeddings import (  # noqa: F401
    EmbeddingInput,
    EmbeddingRequest,
)
from deployments.protocol.audio import (  # noqa: F401
    AudioResponseFormat,
    TranscriptionRequest,
    TranslationRequest,
)
from deployments.protocol.responses import (  # noqa: F401
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputMessage,
    InputText,
    ResponsesFunctionTool,
    ResponsesJsonSchemaFormat,
    ResponsesNamedTool,
    ResponsesRequest,
    ResponsesStreamOptions,
    ResponsesText,
)
from deployments.protocol.tokenize import (  # noqa: F401
    DetokenizeRequest,
    TokenizeRequest,
)
from deployments.protocol.validation import (  # noqa: F401
    param_path,
    validation_error,
)
from deployments.protocol.builders import (  # noqa: F401
    call_deltas,
    calls_finish_reason,
    chat_choice,
    chat_chunk,
    chat_chunk_choice,
    chat_completion,
    completion_choice,
    embedding_list,
    model_card,
    model_list,
    new_id,
    now,
    text_completion,
    usage,
)
from deployments.protocol.schemas import (  # noqa: F401
    AssistantMessageOut,
    ChatChoiceOut,
    ChatCompletion,
    CompletionChoiceOut,
    EmbeddingList,
    EmbeddingOut,
    EmbeddingUsage,
    ErrorDetail,
    ErrorResponse,
    FunctionCallOut,
    ModelCard,
    ModelList,
    ResponseModel,
    TextCompletion,
    ToolCallOut,
    Usage,
)
