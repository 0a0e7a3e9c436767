/**
 * Operational logs (pino), always to stderr: in `bastion stdio` stdout is the
 * MCP channel, and the audit trail is a separate file with its own format.
 *
 * @example
 *   const log = createLogger('info'); log.info({ connector: 'demo' }, 'connector ready');
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string): Logger {
  return pino(
    {
      level,
      base: { service: 'bastion' },
      // Tokens and upstream credentials must never reach a log line.
      redact: { paths: ['token', '*.token', 'headers.authorization', '*.headers.authorization', 'env'], censor: '[redacted]' },
    },
    pino.destination({ fd: 2, sync: false }),
  );
}
