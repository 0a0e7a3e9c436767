/**
 * The `log` host capability: a plugin's message, into the broker's pino
 * logger under the plugin's name, truncated. Plugins cannot pick fields, so
 * they cannot forge other components' log lines.
 *
 * @example
 *   pluginLog(log, 'text-utils', { level: 'info', msg: 'counted 12 words' }, uses);
 */
import type { Logger } from '../../broker/log.ts';
import type { CapabilityUse } from './uses.ts';

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type PluginLogLevel = (typeof LOG_LEVELS)[number];
const MAX_MESSAGE = 2000;

export function pluginLog(log: Logger, plugin: string, entry: { level: PluginLogLevel; msg: string }, uses: CapabilityUse[]): void {
  uses.push({ cap: 'log', level: entry.level, outcome: 'ok' });
  const msg = entry.msg.length > MAX_MESSAGE ? `${entry.msg.slice(0, MAX_MESSAGE)}…` : entry.msg;
  log[entry.level]({ plugin, source: 'plugin' }, msg);
}
