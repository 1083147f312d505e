// The Vercel AI SDK against a running chatgate, as an app would use it. Driven by tests/js_clients.rs.
//
// Env: CHATGATE_URL, CHATGATE_TOKEN, CHATGATE_MODEL, CHATGATE_CONVERSATION, _2, _3, _4 and _5 (conversations of
// the token's user).
// Prints one JSON object: what each client saw.
import { readFileSync } from 'node:fs';
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import {
  AbstractChat, DefaultChatTransport, generateText, readUIMessageStream, stepCountIs, streamText, tool,
} from 'ai';
import { z } from 'zod';

const url = process.env.CHATGATE_URL;
const token = process.env.CHATGATE_TOKEN;
const model = process.env.CHATGATE_MODEL;
const conversation = process.env.CHATGATE_CONVERSATION;

// 1. The OpenAI provider's chat model (`.chat()`: /v1/chat/completions), streaming then not.
const openai = createOpenAI({ baseURL: `${url}/v1`, apiKey: token });
const streamed = streamText({ model: openai.chat(model), prompt: 'Say hello' });
const chunks = [];
for await (const chunk of streamed.textStream) chunks.push(chunk);
const streamUsage = await streamed.usage;
const generated = await generateText({ model: openai.chat(model), system: 'Be brief', prompt: 'Again' });

// 2. useChat's transport against the native endpoint in the UI message stream protocol.
const transport = new DefaultChatTransport({
  api: `${url}/api/v1/conversations/${conversation}/messages?format=ai-sdk`,
  headers: { Authorization: `Bearer ${token}` },
});
const question = { id: 'u1', role: 'user', parts: [{ type: 'text', text: 'Hello from useChat' }] };
const stream = await transport.sendMessages({
  chatId: conversation,
  messages: [question],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: undefined,
});
let uiMessage;
let updates = 0;
for await (const message of readUIMessageStream({ stream, onError: (e) => { throw e; } })) {
  uiMessage = message;
  updates += 1;
}
// useChat's regenerate: the same transport, naming the reply to replace.
const again = await transport.sendMessages({
  chatId: conversation,
  messages: [question, uiMessage],
  trigger: 'regenerate-message',
  messageId: uiMessage.id,
  abortSignal: undefined,
});
let regenerated;
for await (const message of readUIMessageStream({ stream: again, onError: (e) => { throw e; } })) {
  regenerated = message;
}
// The plain Regenerate button: Chat.regenerate() with no message id drops the last reply and sends the rest
// with messageId undefined.
const plain = await transport.sendMessages({
  chatId: conversation,
  messages: [question],
  trigger: 'regenerate-message',
  messageId: undefined,
  abortSignal: undefined,
});
let regeneratedPlain;
for await (const message of readUIMessageStream({ stream: plain, onError: (e) => { throw e; } })) {
  regeneratedPlain = message;
}

// A file part (useChat's attachments are data URLs), in another conversation, on a model that takes images.
const withFile = new DefaultChatTransport({
  api: `${url}/api/v1/conversations/${process.env.CHATGATE_CONVERSATION_2}/messages?format=ai-sdk`,
  headers: { Authorization: `Bearer ${token}` },
});
const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
const fileStream = await withFile.sendMessages({
  chatId: 'c2',
  messages: [{ id: 'u2', role: 'user', parts: [
    { type: 'text', text: 'What is this?' },
    { type: 'file', mediaType: 'image/png', filename: 'dot.png', url: `data:image/png;base64,${png}` },
  ] }],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: undefined,
  body: { model: 'mock' },
});
let fileReply;
for await (const message of readUIMessageStream({ stream: fileStream, onError: (e) => { throw e; } })) {
  fileReply = message;
}

// A reply cancelled on the server (the cancel endpoint, as a Stop button calls it) while the SDK reads it: the
// stream ends with `abort`, the message keeps what was streamed and its metadata.
const slow = new DefaultChatTransport({
  api: `${url}/api/v1/conversations/${process.env.CHATGATE_CONVERSATION_3}/messages?format=ai-sdk`,
  headers: { Authorization: `Bearer ${token}` },
});
const slowStream = await slow.sendMessages({
  chatId: 'c3',
  messages: [{ id: 'u3', role: 'user', parts: [{ type: 'text', text: 'Take your time' }] }],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: undefined,
});
let cancelled;
let cancelSent = false;
for await (const message of readUIMessageStream({ stream: slowStream, onError: (e) => { throw e; } })) {
  cancelled = message;
  const text = message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
  if (!cancelSent && text.length > 0) {
    cancelSent = true;
    const response = await fetch(`${url}/api/v1/generations/${message.metadata.generation_id}/cancel`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) throw new Error(`cancel: ${response.status}`);
  }
}

// useChat({resume: true}): the page went away mid-reply (the reader cancelled), then reconnects by
// conversation; the whole reply arrives. Once it is over, the reconnect answers 204 (null: nothing to resume).
const conversation4 = process.env.CHATGATE_CONVERSATION_4;
const resumable = new DefaultChatTransport({
  api: `${url}/api/v1/conversations/${conversation4}/messages?format=ai-sdk`,
  headers: { Authorization: `Bearer ${token}` },
  prepareReconnectToStreamRequest: ({ id }) => ({ api: `${url}/api/v1/conversations/${id}/stream?format=ai-sdk` }),
});
const interrupted = await resumable.sendMessages({
  chatId: conversation4,
  messages: [{ id: 'u4', role: 'user', parts: [{ type: 'text', text: 'Tell me slowly' }] }],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal: undefined,
});
const reader = interrupted.getReader();
for (;;) {
  const { value, done } = await reader.read();
  if (done || value.type === 'text-delta') break;
}
await reader.cancel();
const resumedStream = await resumable.reconnectToStream({ chatId: conversation4 });
let resumed = null;
if (resumedStream) {
  for await (const message of readUIMessageStream({ stream: resumedStream, onError: (e) => { throw e; } })) {
    resumed = message;
  }
}
const afterEnd = await resumable.reconnectToStream({ chatId: conversation4 });

// 5. A tool loop: streamText with a tool over /v1/chat/completions, on the built-in mock model (which calls the
// tool it is offered, then quotes the tool's result).
const toolRun = streamText({
  model: openai.chat('mock'),
  prompt: 'Weather in Paris?',
  tools: {
    get_weather: tool({
      description: 'Current weather at a place',
      inputSchema: z.object({ location: z.string() }),
      execute: async ({ location }) => ({ location, celsius: 21 }),
    }),
  },
  stopWhen: stepCountIs(3),
});
const toolText = await toolRun.text;
const toolSteps = (await toolRun.steps).map((step) => ({
  finishReason: step.finishReason,
  toolCalls: step.toolCalls.map((c) => ({ toolCallId: c.toolCallId, toolName: c.toolName, input: c.input })),
  toolResults: step.toolResults.map((r) => ({ toolCallId: r.toolCallId, output: r.output })),
}));

// 6. The AI SDK's default provider, `openai(model)`: the Responses API (/v1/responses), whole, streamed, and a
// tool loop (`store: false`: chatgate keeps no items to reference).
const weather = tool({
  description: 'Current weather at a place',
  inputSchema: z.object({ location: z.string() }),
  execute: async ({ location }) => ({ location, celsius: 21 }),
});
const viaResponses = await generateText({ model: openai('mock'), prompt: 'Responses hello' });
const responsesStream = streamText({ model: openai('mock'), prompt: 'Responses stream' });
let responsesText = '';
for await (const piece of responsesStream.textStream) responsesText += piece;
const responsesTools = streamText({
  model: openai('mock'),
  prompt: 'Weather in Paris?',
  tools: { get_weather: weather },
  stopWhen: stepCountIs(3),
  providerOptions: { openai: { store: false } },
});
const responsesToolText = await responsesTools.text;
const responsesToolSteps = (await responsesTools.steps).map((step) => ({
  finishReason: step.finishReason,
  toolCalls: step.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })),
}));

// 7. The Stop button: the SDK's own Chat (AbstractChat, which @ai-sdk/react's useChat wraps) and its stop(),
// which only aborts the request. With `on_disconnect=cancel` on the transport's URL, that stops the reply on the
// server too.
class PlainState {
  constructor() { this.status = 'ready'; this.error = undefined; this.messages = []; }
  pushMessage(message) { this.messages = this.messages.concat(message); }
  popMessage() { this.messages = this.messages.slice(0, -1); }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  }
  snapshot(thing) { return structuredClone(thing); }
}
class Chat extends AbstractChat {
  constructor(init) { super({ ...init, state: new PlainState() }); }
}
const conversation5 = process.env.CHATGATE_CONVERSATION_5;
const stoppable = new Chat({
  id: conversation5,
  transport: new DefaultChatTransport({
    api: `${url}/api/v1/conversations/${conversation5}/messages?format=ai-sdk&on_disconnect=cancel`,
    headers: { Authorization: `Bearer ${token}` },
  }),
});
const replyText = () => stoppable.messages
  .filter((m) => m.role === 'assistant')
  .flatMap((m) => m.parts.filter((p) => p.type === 'text').map((p) => p.text))
  .join('');
const sending = stoppable.sendMessage({ text: 'Count for me, slowly' });
while (replyText().length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
await stoppable.stop();
await sending;
const stopped = { text: replyText(), status: stoppable.status };

// 8. The generic OpenAI-compatible provider (what apps use for any OpenAI-shaped server), with usage on.
const compatible = createOpenAICompatible({ name: 'chatgate', baseURL: `${url}/v1`, apiKey: token, includeUsage: true });
const compatibleStream = streamText({ model: compatible(model), prompt: 'Compatible hello' });
let compatibleText = '';
for await (const chunk of compatibleStream.textStream) compatibleText += chunk;

const version = (name) => JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;

console.log(JSON.stringify({
  versions: { node: process.version, ai: version('ai'), openai: version('@ai-sdk/openai'), compatible: version('@ai-sdk/openai-compatible') },
  compatible: { text: compatibleText, usage: await compatibleStream.usage, finishReason: await compatibleStream.finishReason },
  stopped,
  responses: {
    generated: { text: viaResponses.text, finishReason: viaResponses.finishReason, usage: viaResponses.usage },
    streamed: { text: responsesText, usage: await responsesStream.usage },
    tools: { text: responsesToolText, steps: responsesToolSteps },
  },
  tools: { text: toolText, steps: toolSteps },
  stream: { chunks, text: chunks.join(''), usage: streamUsage },
  generate: { text: generated.text, usage: generated.usage, finishReason: generated.finishReason },
  useChat: { message: uiMessage, updates, regenerated, regeneratedPlain, fileReply, cancelled },
  resume: { resumed, afterEnd },
}));
