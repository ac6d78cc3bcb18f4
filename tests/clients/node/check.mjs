// Drives the official openai-node client against a running server and prints what it got as
// one JSON object on stdout; tests/test_clients_graph.py makes the assertions.
// Configured the way users configure it: OPENAI_BASE_URL and OPENAI_API_KEY in the environment.
// CHAT_MODEL and EMBED_MODEL name the served models.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0, timeout: 180_000 });
const chatModel = process.env.CHAT_MODEL;
const embedModel = process.env.EMBED_MODEL;
const france = [{ role: "user", content: "What is the capital of France?" }];
const out = {};

const chat = await client.chat.completions.create({ model: chatModel, messages: france, temperature: 0, max_tokens: 40 });
out.chat = { content: chat.choices[0].message.content, finish_reason: chat.choices[0].finish_reason, usage: chat.usage };

const stream = await client.chat.completions.create({
  model: chatModel, messages: france, temperature: 0, max_tokens: 40, stream: true,
  stream_options: { include_usage: true },
});
const pieces = [];
let finish = null;
let streamUsage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) streamUsage = chunk.usage;
  if (!chunk.choices.length) continue;
  pieces.push(chunk.choices[0].delta.content ?? "");
  finish = chunk.choices[0].finish_reason ?? finish;
}
out.stream = { text: pieces.join(""), finish_reason: finish, chunks, usage: streamUsage };

// The client asks for base64 by default and decodes it into numbers.
const words = ["king", "queen", "carburetor"];
const emb = await client.embeddings.create({ model: embedModel, input: words });
out.embeddings = { vectors: emb.data.map((d) => Array.from(d.embedding)), indexes: emb.data.map((d) => d.index), usage: emb.usage };

try {
  await client.chat.completions.create({ model: "no-such-model", messages: france });
  out.not_found = null;
} catch (err) {
  out.not_found = {
    class: err.constructor.name, is_not_found: err instanceof OpenAI.NotFoundError,
    status: err.status, code: err.code, param: err.param, type: err.type,
  };
}

try {
  await client.chat.completions.create({ model: chatModel, messages: france, temperature: 5 });
  out.bad_request = null;
} catch (err) {
  out.bad_request = { class: err.constructor.name, is_bad_request: err instanceof OpenAI.BadRequestError, status: err.status, param: err.param };
}

process.stdout.write(JSON.stringify(out));
