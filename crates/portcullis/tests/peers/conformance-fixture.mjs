#!/usr/bin/env node
// MCP server fixture that satisfies every server scenario of the official conformance suite
// (@modelcontextprotocol/conformance 0.1.x, `npx conformance server --suite all`), so tests can
// run the suite once against this fixture directly and once through the gateway: any scenario
// that passes directly but fails through the gateway points at the gateway.
//
// Usage:
//   node conformance-fixture.mjs [stdio|http]        (default: stdio)
//   http mode listens on 127.0.0.1:$PORT (default 3000, 0 = any free port) at /mcp and prints
//   `listening on http://127.0.0.1:PORT/mcp` as its first stdout line.
//
// Finding the SDK: this file lives in the repository, but the npm packages live in the test-peers
// cache (`cargo xtask ci` installs them into ~/.cache/portcullis-peers/node). Bare ESM imports
// resolve relative to this file, never the current directory, so they cannot reach that cache.
// Instead the SDK is loaded with a `require` created at the cache folder, which resolves through
// the package's `exports` map (its CommonJS build). The folder is the first of these that holds
// @modelcontextprotocol/sdk:
//   1. $PORTCULLIS_PEERS_NODE   (the folder that contains node_modules, e.g. ~/.cache/portcullis-peers/node)
//   2. the current directory    (or any parent of it, as Node's resolution walks upwards)
//   3. $HOME/.cache/portcullis-peers/node
// The gateway starts stdio children with a clean environment, so configs should pass
// PORTCULLIS_PEERS_NODE explicitly.
//
// Everything is built on the low-level `Server` API rather than `McpServer`, so that what goes on
// the wire is exactly what is written here (schemas are sent verbatim, e.g. the JSON Schema
// 2020-12 keywords the suite checks are preserved).

import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

function sdkRequire() {
  const bases = [
    process.env.PORTCULLIS_PEERS_NODE,
    process.cwd(),
    path.join(os.homedir(), '.cache', 'portcullis-peers', 'node'),
  ].filter(Boolean);
  for (const base of bases) {
    // createRequire only needs a path inside the folder; the file itself need not exist.
    const require = createRequire(path.join(path.resolve(base), 'noop.js'));
    try {
      require.resolve('@modelcontextprotocol/sdk/server/index.js');
      return require;
    } catch {
      // not here; try the next folder
    }
  }
  throw new Error(
    `@modelcontextprotocol/sdk not found under any of: ${bases.join(', ')}; ` +
      'set PORTCULLIS_PEERS_NODE to the folder holding node_modules',
  );
}

const require = sdkRequire();
const { Server } = require('@modelcontextprotocol/sdk/server/index.js');
const { StdioServerTransport } = require('@modelcontextprotocol/sdk/server/stdio.js');
const { StreamableHTTPServerTransport } = require('@modelcontextprotocol/sdk/server/streamableHttp.js');
const {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  LoggingLevelSchema,
  McpError,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} = require('@modelcontextprotocol/sdk/types.js');

// 1x1 red PNG and a minimal WAV: the suite only checks that data and mimeType are present.
const PNG_BASE64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV_BASE64 = 'UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (value) => ({ type: 'text', text: value });
const noArguments = { type: 'object', properties: {} };

// ---------------------------------------------------------------------------------------------
// Tools

const TOOLS = [
  { name: 'test_simple_text', description: 'Returns a simple text response', inputSchema: noArguments },
  { name: 'test_image_content', description: 'Returns an image (1x1 PNG)', inputSchema: noArguments },
  { name: 'test_audio_content', description: 'Returns audio (minimal WAV)', inputSchema: noArguments },
  { name: 'test_embedded_resource', description: 'Returns an embedded text resource', inputSchema: noArguments },
  {
    name: 'test_multiple_content_types',
    description: 'Returns text, image and embedded resource content',
    inputSchema: noArguments,
  },
  {
    name: 'test_tool_with_logging',
    description: 'Sends three info log notifications while it runs',
    inputSchema: noArguments,
  },
  {
    name: 'test_tool_with_progress',
    description: 'Reports progress 0, 50 and 100 of 100 when given a progress token',
    inputSchema: noArguments,
  },
  { name: 'test_error_handling', description: 'Always fails with isError: true', inputSchema: noArguments },
  {
    name: 'test_sampling',
    description: 'Asks the client for an LLM completion (sampling/createMessage)',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the client for user input (elicitation/create)',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
  },
  {
    name: 'test_elicitation_sep1034_defaults',
    description: 'Elicitation whose schema has defaults for every primitive type (SEP-1034)',
    inputSchema: noArguments,
  },
  {
    name: 'test_elicitation_sep1330_enums',
    description: 'Elicitation whose schema has all five enum variants (SEP-1330)',
    inputSchema: noArguments,
  },
  {
    // The suite checks that $schema, $defs and additionalProperties survive tools/list, which is
    // exactly what a gateway that re-serialises schemas through a narrower type would strip.
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: {
        address: {
          type: 'object',
          properties: { street: { type: 'string' }, city: { type: 'string' } },
        },
      },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
  },
  {
    name: 'test_reconnection',
    description: 'Closes its SSE stream mid-call and answers after the client resumes (SEP-1699)',
    inputSchema: noArguments,
  },
];

const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'User name', default: 'John Doe' },
    age: { type: 'integer', description: 'User age', default: 30 },
    score: { type: 'number', description: 'User score', default: 95.5 },
    status: {
      type: 'string',
      description: 'User status',
      enum: ['active', 'inactive', 'pending'],
      default: 'active',
    },
    verified: { type: 'boolean', description: 'Verification status', default: true },
  },
  required: [],
};

const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: {
      type: 'string',
      description: 'Untitled single-select',
      enum: ['option1', 'option2', 'option3'],
    },
    titledSingle: {
      type: 'string',
      description: 'Titled single-select',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: {
      type: 'string',
      description: 'Legacy titled enum (deprecated enumNames)',
      enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'],
    },
    untitledMulti: {
      type: 'array',
      description: 'Untitled multi-select',
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    },
    titledMulti: {
      type: 'array',
      description: 'Titled multi-select',
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
  required: [],
};

// ---------------------------------------------------------------------------------------------
// Resources and prompts

const RESOURCES = [
  {
    uri: 'test://static-text',
    name: 'static-text',
    description: 'A static text resource',
    mimeType: 'text/plain',
  },
  {
    uri: 'test://static-binary',
    name: 'static-binary',
    description: 'A static binary resource (1x1 PNG)',
    mimeType: 'image/png',
  },
  {
    uri: 'test://watched-resource',
    name: 'watched-resource',
    description: 'A resource clients can subscribe to',
    mimeType: 'text/plain',
  },
];

const TEMPLATE_PATTERN = /^test:\/\/template\/([^/]+)\/data$/;

function readResource(uri) {
  switch (uri) {
    case 'test://static-text':
      return { uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' };
    case 'test://static-binary':
      return { uri, mimeType: 'image/png', blob: PNG_BASE64 };
    case 'test://watched-resource':
      return { uri, mimeType: 'text/plain', text: 'Watched resource content' };
  }
  const match = TEMPLATE_PATTERN.exec(uri);
  if (match) {
    const id = decodeURIComponent(match[1]);
    return {
      uri,
      mimeType: 'application/json',
      text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
    };
  }
  // -32002 is the spec's "resource not found" code.
  throw new McpError(-32002, `Resource not found: ${uri}`, { uri });
}

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A simple prompt without arguments' },
  {
    name: 'test_prompt_with_arguments',
    description: 'A prompt that substitutes two arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource',
    description: 'A prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'A prompt that includes an image' },
];

function getPrompt(name, args = {}) {
  const missing = (PROMPTS.find((prompt) => prompt.name === name)?.arguments ?? [])
    .filter((argument) => argument.required && args[argument.name] === undefined)
    .map((argument) => argument.name);
  if (missing.length > 0) {
    throw new McpError(ErrorCode.InvalidParams, `Missing required arguments: ${missing.join(', ')}`);
  }
  switch (name) {
    case 'test_simple_prompt':
      return { messages: [{ role: 'user', content: text('This is a simple prompt for testing.') }] };
    case 'test_prompt_with_arguments':
      return {
        messages: [
          { role: 'user', content: text(`Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'`) },
        ],
      };
    case 'test_prompt_with_embedded_resource':
      return {
        messages: [
          {
            role: 'user',
            content: {
              type: 'resource',
              resource: {
                uri: args.resourceUri,
                mimeType: 'text/plain',
                text: 'Embedded resource content for testing.',
              },
            },
          },
          { role: 'user', content: text('Please process the embedded resource above.') },
        ],
      };
    case 'test_prompt_with_image':
      return {
        messages: [
          { role: 'user', content: { type: 'image', data: PNG_BASE64, mimeType: 'image/png' } },
          { role: 'user', content: text('Please analyze the image above.') },
        ],
      };
  }
  throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${name}`);
}

// Candidate values for completion/complete, keyed by argument name.
const COMPLETIONS = {
  arg1: ['test', 'testValue1', 'paris', 'park', 'party'],
  arg2: ['testValue2', 'world'],
  resourceUri: ['test://static-text', 'test://static-binary', 'test://watched-resource'],
  id: ['1', '2', '3', '123'],
};

// ---------------------------------------------------------------------------------------------
// One MCP server per session (per HTTP session, or the single stdio connection): log level and
// subscriptions are session state and must not leak between the suite's clients.

const LEVELS = LoggingLevelSchema.options; // ordered from least to most severe

function createServer() {
  const server = new Server(
    { name: 'portcullis-conformance-fixture', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
      instructions: 'Conformance fixture for the Portcullis gateway tests.',
    },
  );

  let minimumLevel; // unset until the client sends logging/setLevel: everything is sent
  const subscriptions = new Set();

  // Replaces the SDK's built-in handler: tools log through extra.sendNotification (so the log
  // travels on the tool call's own stream), which the SDK's level filter does not see.
  server.setRequestHandler(SetLevelRequestSchema, async (request) => {
    minimumLevel = request.params.level;
    return {};
  });

  const log = (extra, level, data) =>
    minimumLevel && LEVELS.indexOf(level) < LEVELS.indexOf(minimumLevel)
      ? Promise.resolve()
      : extra.sendNotification({
          method: 'notifications/message',
          params: { level, logger: 'conformance-fixture', data },
        });

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const args = request.params.arguments ?? {};
    switch (request.params.name) {
      case 'test_simple_text':
        return { content: [text('This is a simple text response for testing.')] };

      case 'test_image_content':
        return { content: [{ type: 'image', data: PNG_BASE64, mimeType: 'image/png' }] };

      case 'test_audio_content':
        return { content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }] };

      case 'test_embedded_resource':
        return {
          content: [
            {
              type: 'resource',
              resource: {
                uri: 'test://embedded-resource',
                mimeType: 'text/plain',
                text: 'This is an embedded resource content.',
              },
            },
          ],
        };

      case 'test_multiple_content_types':
        return {
          content: [
            text('Multiple content types test:'),
            { type: 'image', data: PNG_BASE64, mimeType: 'image/png' },
            {
              type: 'resource',
              resource: {
                uri: 'test://mixed-content-resource',
                mimeType: 'application/json',
                text: JSON.stringify({ test: 'data', value: 123 }),
              },
            },
          ],
        };

      case 'test_tool_with_logging':
        // The pauses make the notifications arrive while the call is visibly still running.
        await log(extra, 'info', 'Tool execution started');
        await sleep(50);
        await log(extra, 'info', 'Tool processing data');
        await sleep(50);
        await log(extra, 'info', 'Tool execution completed');
        return { content: [text('Tool with logging executed successfully')] };

      case 'test_tool_with_progress': {
        const progressToken = request.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (progress > 0) await sleep(50);
          // Without a token the client asked for no progress, and sending some would be a
          // protocol violation a gateway might rightly drop.
          if (progressToken !== undefined) {
            await extra.sendNotification({
              method: 'notifications/progress',
              params: { progressToken, progress, total: 100, message: `Completed step ${progress} of 100` },
            });
          }
        }
        return { content: [text(`Progress tool completed (token: ${progressToken ?? 'none'})`)] };
      }

      case 'test_error_handling':
        // A tool failure is a result with isError, not a JSON-RPC error.
        return { isError: true, content: [text('This tool intentionally returns an error for testing')] };

      case 'test_sampling': {
        // extra.sendRequest ties the request to this tool call, so over Streamable HTTP it goes
        // out on the call's POST stream rather than the standalone GET stream.
        const result = await extra.sendRequest(
          {
            method: 'sampling/createMessage',
            params: {
              messages: [{ role: 'user', content: text(String(args.prompt ?? '')) }],
              maxTokens: 100,
            },
          },
          CreateMessageResultSchema,
        );
        const reply = Array.isArray(result.content)
          ? result.content.map((part) => part.text ?? '').join('')
          : (result.content?.text ?? '');
        return { content: [text(`LLM response: ${reply}`)] };
      }

      case 'test_elicitation': {
        const result = await extra.sendRequest(
          {
            method: 'elicitation/create',
            params: {
              message: String(args.message ?? ''),
              requestedSchema: {
                type: 'object',
                properties: {
                  username: { type: 'string', description: "User's response" },
                  email: { type: 'string', description: "User's email address" },
                },
                required: ['username', 'email'],
              },
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`)],
        };
      }

      case 'test_elicitation_sep1034_defaults':
      case 'test_elicitation_sep1330_enums': {
        const sep1034 = request.params.name === 'test_elicitation_sep1034_defaults';
        const result = await extra.sendRequest(
          {
            method: 'elicitation/create',
            params: {
              message: sep1034
                ? 'Please review and update the form fields with defaults'
                : 'Please choose from the enum fields',
              requestedSchema: sep1034 ? SEP1034_SCHEMA : SEP1330_SCHEMA,
            },
          },
          ElicitResultSchema,
        );
        return {
          content: [
            text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
          ],
        };
      }

      case 'json_schema_2020_12_tool':
        return { content: [text(`Received: ${JSON.stringify(args)}`)] };

      case 'test_reconnection':
        // extra.closeSSEStream exists only over HTTP with an event store and a client whose
        // protocol version can resume (2025-11-25+); elsewhere the call simply answers.
        if (extra.closeSSEStream) {
          extra.closeSSEStream();
          await sleep(100);
        }
        return { content: [text('Reconnection test completed successfully.')] };
    }
    throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));

  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [
      {
        uriTemplate: 'test://template/{id}/data',
        name: 'template-data',
        description: 'Data for the given id',
        mimeType: 'application/json',
      },
    ],
  }));

  server.setRequestHandler(ReadResourceRequestSchema, async (request) => ({
    contents: [readResource(request.params.uri)],
  }));

  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscriptions.add(request.params.uri);
    return {};
  });

  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));

  server.setRequestHandler(GetPromptRequestSchema, async (request) =>
    getPrompt(request.params.name, request.params.arguments),
  );

  server.setRequestHandler(CompleteRequestSchema, async (request) => {
    const { name, value } = request.params.argument;
    const values = (COMPLETIONS[name] ?? []).filter((candidate) => candidate.startsWith(value ?? ''));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

// ---------------------------------------------------------------------------------------------
// stdio

async function runStdio() {
  const server = createServer();
  // stdout carries the protocol; diagnostics go to stderr.
  server.onerror = (error) => console.error('[conformance-fixture]', error);
  await server.connect(new StdioServerTransport());
}

// ---------------------------------------------------------------------------------------------
// Streamable HTTP

// In-memory event store: it is what lets the SDK send SSE priming events and resume a stream a
// client reconnects to with Last-Event-ID (server-sse-polling, SEP-1699).
function createEventStore() {
  const events = []; // { id, streamId, message }, in the order they were stored
  let counter = 0;
  return {
    async storeEvent(streamId, message) {
      const id = `${streamId}::${String(++counter).padStart(12, '0')}`;
      events.push({ id, streamId, message });
      return id;
    },
    async getStreamIdForEventId(eventId) {
      return events.find((event) => event.id === eventId)?.streamId;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const at = events.findIndex((event) => event.id === lastEventId);
      if (at < 0) throw new Error(`Unknown event id: ${lastEventId}`);
      const { streamId } = events[at];
      for (const event of events.slice(at + 1)) {
        // Priming events are stored as {} and carry nothing to replay.
        if (event.streamId === streamId && Object.keys(event.message).length > 0) {
          await send(event.id, event.message);
        }
      }
      return streamId;
    },
  };
}

// DNS-rebinding protection: a page on evil.example.com whose name resolves to 127.0.0.1 must not
// be able to drive this server, so only loopback names are accepted in Host and Origin.
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]']);

function loopbackHost(host) {
  if (!host) return false;
  try {
    return LOOPBACK.has(new URL(`http://${host}`).hostname.toLowerCase());
  } catch {
    return false;
  }
}

function loopbackOrigin(origin) {
  if (origin === undefined) return true; // non-browser clients send no Origin
  try {
    return LOOPBACK.has(new URL(origin).hostname.toLowerCase());
  } catch {
    return false;
  }
}

function sendJsonError(res, status, code, message) {
  res.writeHead(status, { 'Content-Type': 'application/json' }).end(
    JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }),
  );
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function runHttp() {
  const sessions = new Map(); // mcp-session-id -> { transport, server }

  const httpServer = http.createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      if (url.pathname !== '/mcp') return sendJsonError(res, 404, -32000, 'Not found');
      if (!loopbackHost(req.headers.host)) {
        return sendJsonError(res, 403, -32000, `Forbidden: invalid Host header: ${req.headers.host}`);
      }
      if (!loopbackOrigin(req.headers.origin)) {
        return sendJsonError(res, 403, -32000, `Forbidden: invalid Origin header: ${req.headers.origin}`);
      }

      // The body is parsed here because routing depends on it: an initialize request without a
      // session id starts a new session, anything else must name an existing one.
      let body;
      if (req.method === 'POST') {
        const raw = await readBody(req);
        try {
          body = JSON.parse(raw);
        } catch {
          return sendJsonError(res, 400, -32700, 'Parse error: invalid JSON');
        }
      }

      const sessionId = req.headers['mcp-session-id'];
      if (sessionId !== undefined) {
        const session = sessions.get(sessionId);
        if (!session) return sendJsonError(res, 404, -32001, 'Session not found');
        return await session.transport.handleRequest(req, res, body);
      }

      const initializing = req.method === 'POST' && !Array.isArray(body) && isInitializeRequest(body);
      if (!initializing) {
        return sendJsonError(res, 400, -32000, 'Bad Request: no valid session id provided');
      }

      const server = createServer();
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: createEventStore(),
        retryInterval: 500,
        onsessioninitialized: (id) => sessions.set(id, { transport, server }),
        onsessionclosed: (id) => sessions.delete(id),
      });
      transport.onclose = () => {
        if (transport.sessionId) sessions.delete(transport.sessionId);
      };
      server.onerror = (error) => console.error('[conformance-fixture]', error);
      await server.connect(transport);
      await transport.handleRequest(req, res, body);
    } catch (error) {
      console.error('[conformance-fixture] request failed:', error);
      if (!res.headersSent) sendJsonError(res, 500, -32603, 'Internal error');
      else res.end();
    }
  });

  const port = Number(process.env.PORT ?? 3000);
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(port, '127.0.0.1', resolve);
  });
  console.log(`listening on http://127.0.0.1:${httpServer.address().port}/mcp`);

  // Exit at once on a signal: tests stop the fixture by PID and should not wait for open SSE
  // streams to drain; the kernel closes the sockets.
  process.on('SIGINT', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
}

// ---------------------------------------------------------------------------------------------

const mode = process.argv[2] ?? 'stdio';
if (mode === 'stdio') {
  await runStdio();
} else if (mode === 'http') {
  await runHttp();
} else {
  console.error(`usage: node conformance-fixture.mjs [stdio|http] (got ${JSON.stringify(mode)})`);
  process.exit(2);
}
