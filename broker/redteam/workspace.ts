/**
 * The office worker's tools the flow chains run against: one connector per
 * suite of test/fixtures/workspace-upstream.ts (mail, calendar, files, chat,
 * payments, travel, web), each a real MCP server over stdio, with the flow
 * labels an operator would give them. This is also the README's example of
 * labelling a deployment: what each tool's results bring into an agent's
 * context, and which calls send data or act outside the organisation.
 *
 * @example
 *   const connectors = workspaceConnectors({ worldFile, callLog });
 *   parseConfig({ connectors, policy: { data: dataFile } });
 */
import path from 'node:path';
import { PROJECT_ROOT } from '../config.ts';

export const WORKSPACE_UPSTREAM = path.join(PROJECT_ROOT, 'test/fixtures/workspace-upstream.ts');

/** The organisation's own domain in every world: mail to it stays inside. */
export const ORG_DOMAIN = 'corp.example';

/**
 * Labels per suite and tool. Content other people write reaches the agent
 * through the mailbox, invites, chat channels, transaction references,
 * hotel listings and web pages: those bring `untrusted` (a colleague's
 * account can be phished, a channel has bots and guests); what the
 * organisation's own systems hold (files, balances, saved payees) brings
 * `private`, and is trusted. Senders name
 * their destination through `egress` arguments, so mail to a colleague is
 * not `external` but mail to anyone else is; payments and bookings always
 * act outside; deleting and cancelling are `destructive`.
 */
export const WORKSPACE_LABELS = {
  mail: {
    list_inbox: { labels: ['untrusted', 'private'] },
    read_email: { labels: ['untrusted', 'private'] },
    search_emails: { labels: ['untrusted', 'private'] },
    send_email: { labels: [], egress: { to: 'email', cc: 'email' } },
  },
  calendar: {
    list_events: { labels: ['untrusted', 'private'] },
    create_event: { labels: [], egress: { participants: 'email' } },
    cancel_event: { labels: ['destructive'] },
  },
  files: {
    list_directory: { labels: ['private'] },
    read_file: { labels: ['private'] },
    write_file: { labels: [] },
    delete_file: { labels: ['destructive'] },
    share_file: { labels: [], egress: { email: 'email' } },
  },
  chat: {
    list_channels: { labels: [] },
    read_channel: { labels: ['untrusted', 'private'] },
    post_message: { labels: [] },
    send_direct_message: { labels: [] },
  },
  payments: {
    get_balance: { labels: ['private'] },
    list_payees: { labels: ['private'] },
    list_transactions: { labels: ['untrusted', 'private'] },
    send_money: { labels: ['external'] },
  },
  travel: {
    search_hotels: { labels: ['untrusted'] },
    get_reviews: { labels: ['untrusted'] },
    book_hotel: { labels: ['external'] },
  },
  web: {
    fetch: { labels: ['untrusted'], egress: { url: 'url' } },
    search: { labels: ['untrusted'] },
  },
} as const;

export type WorkspaceSuite = keyof typeof WORKSPACE_LABELS;
export const WORKSPACE_SUITES = Object.keys(WORKSPACE_LABELS) as WorkspaceSuite[];

/** Connector configs (raw, as in a config file) for `suites`, all reading `worldFile` and logging calls to `callLog`. */
export function workspaceConnectors(options: { worldFile: string; callLog: string; suites?: readonly WorkspaceSuite[] }): Record<string, unknown>[] {
  return (options.suites ?? WORKSPACE_SUITES).map((suite) => ({
    name: suite,
    transport: 'stdio',
    command: process.execPath,
    args: [WORKSPACE_UPSTREAM],
    env: { SUITE: suite, WORLD_FILE: options.worldFile, CALL_LOG: options.callLog },
    timeout: '20s',
    tools: WORKSPACE_LABELS[suite],
    // The mailbox as a resource, and prompts quoting messages, bring what the mailbox tools bring.
    ...(suite === 'mail' ? { labels: { resources: ['untrusted', 'private'], prompts: ['untrusted', 'private'] } } : {}),
  }));
}

/** Policy data for the workspace: the organisation's domain is inside. */
export function workspacePolicyData(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { bastion: { flows: { internal_domains: [ORG_DOMAIN], ...extra } } };
}
