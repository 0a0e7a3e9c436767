/**
 * `bastion audit verify`: walks an audit file and reports the first record
 * that was edited, deleted, inserted or reordered.
 *
 * @example
 *   const report = await verifyAuditFile('.bastion/audit.jsonl');
 *   if (!report.ok) console.error(report.problem);
 */
import { readFile } from 'node:fs/promises';
import { canonicalJson, GENESIS_HASH, recordHash, type AuditRecord } from './chain.ts';

export type AuditReport =
  | { ok: true; records: number; head: string }
  | { ok: false; records: number; line: number; problem: string };

export async function verifyAuditFile(file: string): Promise<AuditReport> {
  const text = await readFile(file, 'utf8');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  else if (lines.length > 0) {
    return { ok: false, records: lines.length - 1, line: lines.length, problem: 'last record is incomplete (no newline)' };
  }
  let prev = GENESIS_HASH;
  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const fail = (problem: string): AuditReport => ({ ok: false, records: i, line, problem });
    let record: AuditRecord;
    try {
      record = JSON.parse(lines[i]!) as AuditRecord;
    } catch {
      return fail('not valid JSON');
    }
    if (typeof record !== 'object' || record === null) return fail('not a JSON object');
    if (record.seq !== line) {
      return fail(`sequence number ${String(record.seq)} where ${line} was expected (a record is missing, inserted or out of order)`);
    }
    if (record.prev !== prev) return fail(`prev does not match the hash of record ${line - 1} (chain broken)`);
    if (recordHash(record) !== record.hash) return fail('hash does not match the record content (record was edited)');
    if (canonicalJson(record) !== lines[i]) return fail('record is not in canonical form (record was rewritten)');
    prev = record.hash;
  }
  return { ok: true, records: lines.length, head: prev };
}
