/**
 * The demo upstream MCP server that `npm start` connects over stdio: a tiny
 * read-only file store with one low-risk tool (read_file) and one high-risk
 * tool (delete_file), enough to see capability constraints and approvals.
 * It stands in for a real upstream and knows nothing about Bastion.
 */
import { StdioServerTransport } from '@modelcontextprotocol/server/stdio';
import { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';

const files = new Map<string, string>([
  ['/srv/app/README.md', '# app\nA demo service behind Bastion.\n'],
  ['/srv/app/config.yaml', 'replicas: 3\nregion: eu-west-1\n'],
  ['/srv/tmp/scratch.txt', 'temporary notes\n'],
  ['/etc/passwd', 'root:x:0:0:root:/root:/bin/bash\n'],
]);

const server = new McpServer({ name: 'bastion-demo', version: '0.1.0' });

server.registerTool(
  'read_file',
  {
    title: 'Read a file',
    description: 'Returns the content of a file in the demo store.',
    inputSchema: z.object({ path: z.string().describe('absolute path, e.g. /srv/app/README.md') }),
    annotations: { readOnlyHint: true },
  },
  async ({ path }) => {
    const content = files.get(path);
    if (content === undefined) return { isError: true, content: [{ type: 'text', text: `no such file: ${path}` }] };
    return { content: [{ type: 'text', text: content }] };
  },
);

server.registerTool(
  'delete_file',
  {
    title: 'Delete a file',
    description: 'Deletes a file from the demo store. Irreversible.',
    inputSchema: z.object({ path: z.string() }),
    annotations: { destructiveHint: true },
  },
  async ({ path }) => {
    const existed = files.delete(path);
    return { content: [{ type: 'text', text: existed ? `deleted ${path}` : `no such file: ${path}` }] };
  },
);

await server.connect(new StdioServerTransport());
