#!/usr/bin/env node
// Reference MCP client (official TypeScript SDK 1.x) used by the Portcullis integration tests.
//
// Usage: node ts_client.mjs URL TOKEN [--sampling] TOOL JSON_ARGS [TOOL JSON_ARGS]...
// Connects over Streamable HTTP with `Authorization: Bearer TOKEN`, lists the tools, calls each
// TOOL, and prints one JSON object: {"protocol", "server", "tools": [...], "calls": [{tool,
// isError, text}]}. Exit 1 on any failure. With --sampling the client offers the sampling
// capability and answers every sampling request with the text "sampled by the client".
//
// The SDK is loaded from the test-peers cache (see conformance-fixture.mjs for why a
// `require` created at that folder is used instead of bare imports).

import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const base = process.env.PORTCULLIS_PEERS_NODE || path.join(os.homedir(), '.cache', 'portcullis-peers', 'node');
const require = createRequire(path.join(path.resolve(base), 'noop.js'));
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { CreateMessageRequestSchema } = require('@modelcontextprotocol/sdk/types.js');

async function main() {
  const args = process.argv.slice(2);
  const [url, token] = args;
  let rest = args.slice(2);
  const sampling = rest[0] === '--sampling';
  if (sampling) rest = rest.slice(1);
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client(
    { name: 'portcullis-ts-test', version: '1.0.0' },
    { capabilities: sampling ? { sampling: {} } : {} },
  );
  if (sampling) {
    client.setRequestHandler(CreateMessageRequestSchema, async () => ({
      role: 'assistant',
      content: { type: 'text', text: 'sampled by the client' },
      model: 'test-model',
      stopReason: 'endTurn',
    }));
  }
  await client.connect(transport);
  const out = {
    protocol: transport.protocolVersion ?? null,
    server: client.getServerVersion()?.name ?? null,
    tools: (await client.listTools()).tools.map((tool) => tool.name),
    calls: [],
  };
  for (let index = 0; index + 1 < rest.length; index += 2) {
    const result = await client.callTool({ name: rest[index], arguments: JSON.parse(rest[index + 1]) });
    const text = (result.content ?? []).filter((item) => item.type === 'text').map((item) => item.text).join('');
    out.calls.push({ tool: rest[index], isError: Boolean(result.isError), text });
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(`${error?.code ?? ''} ${error?.message ?? error}`.trim());
  process.exit(1);
});
