/**
 * Latency statistics and the tables the benchmark prints.
 *
 * @example
 *   const s = summarize(latenciesMs, seconds);  // { n, p50, p99, max, perSecond }
 *   printTable(['target', 'p50'], [['direct', ms(s.p50)]]);
 */

export interface Summary {
  /** Samples. */
  n: number;
  /** Milliseconds. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
  /** Operations per second over the whole run (n / wall-clock seconds). */
  perSecond: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export function summarize(samplesMs: ArrayLike<number>, seconds: number): Summary {
  const sorted = Float64Array.from(samplesMs).sort();
  let total = 0;
  for (const value of sorted) total += value;
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1]! : Number.NaN,
    mean: sorted.length ? total / sorted.length : Number.NaN,
    perSecond: sorted.length / seconds,
  };
}

/** A duration in milliseconds, shown in the unit that reads best. */
export function time(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 0) return `−${time(-ms)}`;
  if (ms < 0.01) return `${(ms * 1000).toFixed(2)} µs`;
  if (ms < 1) return `${(ms * 1000).toFixed(1)} µs`;
  if (ms < 100) return `${ms.toFixed(2)} ms`;
  return `${ms.toFixed(0)} ms`;
}

export function count(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString('en') : '–';
}

export function ratio(value: number, baseline: number): string {
  return Number.isFinite(value) && Number.isFinite(baseline) && baseline > 0 ? `${(value / baseline).toFixed(2)}×` : '–';
}

export function bytes(n: number | undefined): string {
  return n === undefined ? '–' : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** Prints rows under a header; the first column is left-aligned, the rest right-aligned. */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '─'.repeat(w)).join('  '));
  for (const row of rows) console.log(line(row));
  console.log('');
}
