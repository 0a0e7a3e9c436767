/**
 * The official TypeScript MCP client (v2, @modelcontextprotocol/client) with
 * its own OAuth support, unmodified: this file only supplies the storage and
 * the "browser" an OAuthClientProvider needs, and drives the browser with
 * playwright-core through the IdP's login and Bastion's consent page.
 */
import { Client, StreamableHTTPClientTransport, UnauthorizedError, type OAuthClientProvider } from '@modelcontextprotocol/client';
import type { Page } from 'playwright-core';

export interface OAuthSession {
  provider: OAuthClientProvider & { authorizationUrl: URL | undefined; stored: Record<string, unknown> };
  client: Client;
  transport: StreamableHTTPClientTransport;
}

/** An in-memory OAuthClientProvider; `clientMetadataUrl` makes it a CIMD client, otherwise it registers (DCR). */
export function memoryProvider(options: { redirectUrl: string; clientMetadataUrl?: string; clientName?: string }) {
  const stored: Record<string, unknown> = {};
  const provider = {
    stored,
    authorizationUrl: undefined as URL | undefined,
    get redirectUrl() {
      return options.redirectUrl;
    },
    ...(options.clientMetadataUrl ? { clientMetadataUrl: options.clientMetadataUrl } : {}),
    get clientMetadata() {
      return {
        client_name: options.clientName ?? 'Bastion test agent',
        redirect_uris: [options.redirectUrl],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      };
    },
    clientInformation: () => stored.client as never,
    saveClientInformation: (info: unknown) => void (stored.client = info),
    tokens: () => stored.tokens as never,
    saveTokens: (tokens: unknown) => void (stored.tokens = tokens),
    redirectToAuthorization(url: URL) {
      provider.authorizationUrl = url;
    },
    saveCodeVerifier: (verifier: string) => void (stored.verifier = verifier),
    codeVerifier: () => stored.verifier as string,
  };
  return provider as unknown as OAuthSession['provider'];
}

/** Connects with no token; the SDK discovers everything from the 401 and asks for the browser. */
export async function connectExpectingSignIn(url: string, provider: OAuthSession['provider']): Promise<URL> {
  const client = new Client({ name: 'bastion-oauth-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  try {
    await client.connect(transport);
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  await client.close().catch(() => undefined);
  if (!provider.authorizationUrl) throw new Error('the SDK did not ask for a browser sign-in');
  return provider.authorizationUrl;
}

/** Lets the browser follow the authorization to the client's redirect URI (a listener of the test's) and returns that callback URL. */
export async function authorizeInBrowser(page: Page, authorizationUrl: URL, redirectUrl: string, steps: (page: Page) => Promise<void>): Promise<URL> {
  await page.goto(authorizationUrl.href);
  await steps(page);
  await page.waitForURL((url) => url.href.startsWith(redirectUrl)).catch(async (error: Error) => {
    throw new Error(`${error.message}\nat ${page.url()}:\n${(await page.content()).slice(0, 2000)}`);
  });
  return new URL(page.url());
}

/** Redeems the code through the SDK (it checks `iss`, RFC 9207) and connects with the tokens it got. */
export async function finishAndConnect(url: string, provider: OAuthSession['provider'], callback: URL): Promise<OAuthSession> {
  const first = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  await first.finishAuth(callback.searchParams);
  await first.close();
  const client = new Client({ name: 'bastion-oauth-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
  await client.connect(transport);
  return { provider, client, transport };
}

/**
 * A headless OAuthClientProvider (no redirect URL, so the SDK never asks for a browser): the SDK
 * discovers Bastion from the 401 and asks `grant` for the token request's parameters, as its own
 * client-credentials and cross-app-access providers do. Tokens are kept in memory.
 */
export function headlessProvider(options: { clientId: string; expectedIssuer: string; grant: (scope?: string) => Record<string, string> | Promise<Record<string, string>> }) {
  const stored: { tokens?: unknown } = {};
  return {
    stored,
    get redirectUrl() {
      return undefined;
    },
    get clientMetadata() {
      return { client_name: 'Bastion headless test agent', redirect_uris: [], grant_types: [], token_endpoint_auth_method: 'none' };
    },
    clientInformation: () => ({ client_id: options.clientId, issuer: options.expectedIssuer }),
    tokens: () => stored.tokens as never,
    saveTokens: (tokens: unknown) => void (stored.tokens = tokens),
    redirectToAuthorization() {
      throw new Error('a headless agent has no browser');
    },
    saveCodeVerifier() {},
    codeVerifier(): string {
      throw new Error('a headless agent has no code verifier');
    },
    prepareTokenRequest: async (scope?: string) => new URLSearchParams(await options.grant(scope)),
  } as unknown as OAuthClientProvider & { stored: { tokens?: { access_token: string } } };
}

/** Connects the official client with `provider`; the SDK gets the token itself on the first 401. */
export async function connectHeadless(url: string, provider: OAuthClientProvider): Promise<Client> {
  const client = new Client({ name: 'bastion-headless-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { authProvider: provider }));
  return client;
}
