/**
 * Agents for the isolation tests: real SDK clients over Streamable HTTP that
 * offer roots and record every notification Bastion sends them.
 */
import path from 'node:path';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import type { CreateMessageRequest, CreateMessageResult, LoggingMessageNotification } from '@modelcontextprotocol/client';
import { ROOT } from '../helpers/broker.ts';

/** `@modelcontextprotocol/server-everything` (a pinned devDependency), started over stdio. */
export const EVERYTHING = path.join(ROOT, 'node_modules/@modelcontextprotocol/server-everything/dist/index.js');

export interface Agent {
  client: Client;
  transport: StreamableHTTPClientTransport;
  logs: LoggingMessageNotification['params'][];
  updates: string[];
  /** Replaces the roots this client answers roots/list with (send the list_changed notification yourself). */
  setRoots(next: string[]): void;
  /** Ends the session the way a client does (HTTP DELETE), then closes the client. */
  leave(): Promise<void>;
}

export interface AgentOptions {
  roots?: string[];
  /** Answers sampling/createMessage (the client then offers sampling). */
  sampling?: (request: CreateMessageRequest) => Promise<CreateMessageResult>;
}

export async function connectAgent(url: string, token: string, options: AgentOptions = {}): Promise<Agent> {
  const client = new Client(
    { name: 'isolation-test', version: '1.0.0' },
    { capabilities: { roots: { listChanged: true }, ...(options.sampling ? { sampling: {} } : {}) } },
  );
  if (options.sampling) client.setRequestHandler('sampling/createMessage', options.sampling);
  const logs: Agent['logs'] = [];
  const updates: string[] = [];
  let current = options.roots ?? [];
  client.setRequestHandler('roots/list', async () => ({ roots: current.map((uri) => ({ uri, name: path.basename(uri) })) }));
  client.setNotificationHandler('notifications/message', async (notification) => void logs.push(notification.params));
  client.setNotificationHandler('notifications/resources/updated', async (notification) => void updates.push(notification.params.uri));
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
  await client.connect(transport);
  return {
    client,
    transport,
    logs,
    updates,
    async leave() {
      await transport.terminateSession().catch(() => undefined);
      await client.close().catch(() => undefined);
    },
    setRoots(next) {
      current = next;
    },
  };
}

/** Polls `check` until it holds (generous: the machine may be loaded); throws naming `what`. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 45_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Whether a process with this id runs (a signal-0 probe). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The text of a tool result's first text block. */
export function textOf(result: unknown): string {
  const content = (result as { content?: { type: string; text?: string }[] }).content ?? [];
  return content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}
