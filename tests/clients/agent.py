"""A scripted agent loop in the Auto-GPT / babyagi pattern, over the official ``openai`` client.

Memory is a list of texts with their embeddings (``/v1/embeddings``), recalled by cosine
similarity; each step asks the chat model for the next action, either as a JSON document that
follows a schema (``response_format``) or as a tool call (``tools``). The loop executes the
action (remember, recall, finish) and feeds the result back. It checks the protocol, not the
model's judgement: every answer must parse and match its schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import jsonschema
import numpy as np

COMMANDS = ["remember", "recall", "finish"]

# The Auto-GPT shape: thoughts plus one command with its argument.
ACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "thoughts": {"type": "string"},
        "command": {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": COMMANDS}, "argument": {"type": "string"}},
            "required": ["name", "argument"],
            "additionalProperties": False,
        },
    },
    "required": ["thoughts", "command"],
    "additionalProperties": False,
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": argument}},
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    }
    for name, description, argument in [
        ("remember", "Store a fact in long-term memory.", "the fact"),
        ("recall", "Search long-term memory.", "what to look for"),
        ("finish", "Finish the task with a final answer.", "the answer"),
    ]
]

SYSTEM = (
    "You are an autonomous agent. Work towards the goal one command at a time. Commands: "
    "remember(text) stores a fact, recall(text) searches your memory, finish(text) ends the task "
    "with the answer."
)


@dataclass
class Memory:
    """Texts and their embeddings; ``search`` ranks by cosine similarity."""

    client: object
    model: str
    texts: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, *texts: str) -> None:
        data = self.client.embeddings.create(model=self.model, input=list(texts)).data
        assert [d.index for d in data] == list(range(len(texts)))
        self.texts += texts
        self.vectors += [np.asarray(d.embedding, dtype=np.float64) for d in data]

    def search(self, query: str, k: int = 2) -> list[str]:
        q = np.asarray(self.client.embeddings.create(model=self.model, input=query).data[0].embedding)
        m = np.stack(self.vectors)
        scores = m @ q / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
        return [self.texts[i] for i in np.argsort(-scores)[:k]]


@dataclass
class Step:
    command: str
    argument: str
    result: str


class Agent:
    def __init__(self, client, chat_model: str, memory: Memory, goal: str) -> None:
        self.client = client
        self.chat_model = chat_model
        self.memory = memory
        self.goal = goal
        self.steps: list[Step] = []

    def execute(self, command: str, argument: str) -> str:
        if command == "remember":
            self.memory.add(argument)
            return "stored"
        if command == "recall":
            return "; ".join(self.memory.search(argument))
        return "done"

    def context(self) -> str:
        recalled = "\n".join(f"- {t}" for t in self.memory.search(self.goal))
        last = f"\nLast result: {self.steps[-1].result}" if self.steps else ""
        return f"Goal: {self.goal}\nRelevant memories:\n{recalled}{last}\nWhat is your next command?"

    def json_step(self) -> Step:
        """Auto-GPT style: the action as a JSON document constrained by ``json_schema``."""
        reply = self.client.chat.completions.create(
            model=self.chat_model,
            messages=[
                {"role": "system", "content": SYSTEM + " Answer with a JSON object."},
                {"role": "user", "content": self.context()},
            ],
            response_format={"type": "json_schema", "json_schema": {"name": "action", "schema": ACTION_SCHEMA, "strict": True}},
            temperature=0,
            max_tokens=200,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", f"the JSON action was cut off: {choice.message.content!r}"
        action = json.loads(choice.message.content)
        jsonschema.validate(action, ACTION_SCHEMA)
        return self._run(action["command"]["name"], action["command"]["argument"])

    def tool_step(self, messages: list[dict]) -> Step:
        """Function-calling style: the action as a tool call; the result goes back as a tool message."""
        if not messages:
            messages += [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.context()}]
        reply = self.client.chat.completions.create(
            model=self.chat_model, messages=messages, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = choice.message.tool_calls
        assert calls, "tool_choice=required must give a tool call"
        call = calls[0]
        assert call.type == "function" and call.id
        tool = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, tool["function"]["parameters"])
        step = self._run(call.function.name, arguments["text"])
        messages.append(choice.message)  # as OpenAI's guide does: the SDK sends it back as it came
        messages += [{"role": "tool", "tool_call_id": c.id, "content": step.result if c is call else "skipped"} for c in calls]
        return step

    def _run(self, command: str, argument: str) -> Step:
        step = Step(command, argument, self.execute(command, argument))
        self.steps.append(step)
        return step
