/**
 * `bastion audit verify`: walks an audit file and reports the first record
 * that was edited, deleted, inserted or reordered. Recovery records (written
 * by `bastion audit recover` after a torn tail) are chained like any other
 * record and listed in the report; their signatures are checked with the
 * checkpoint key (recover.ts, verifyRecovery).
 *
 * @example
 *   const report = await verifyAuditFile('.bastion/audit.jsonl');
 *   if (!report.ok) console.error(report.problem);
 */
import { readFile } from 'node:fs/promises';
import { canonicalJson, GENESIS_HASH, recordHash, type AuditRecord } from './chain.ts';

/** The event of the record `bastion audit recover` appends after cutting a torn tail off. */
export const RECOVERY_EVENT = 'audit.recovered';

export type AuditReport =
  | { ok: true; records: number; head: string; recoveries: AuditRecord[] }
  | { ok: false; records: number; line: number; problem: string };

export async function verifyAuditFile(file: string): Promise<AuditReport> {
  return verifyAuditText(await readFile(file, 'utf8'));
}

/** The same walk over text already read (recover.ts verifies the whole records before a torn tail). */
export function verifyAuditText(text: string): AuditReport {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  else if (lines.length > 0) {
    return { ok: false, records: lines.length - 1, line: lines.length, problem: 'last record is incomplete (no newline); `bastion audit recover FILE` cuts it off and keeps it as evidence' };
  }
  let prev = GENESIS_HASH;
  const recoveries: AuditRecord[] = [];
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
    if (record.event === RECOVERY_EVENT) recoveries.push(record);
    prev = record.hash;
  }
  return { ok: true, records: lines.length, head: prev, recoveries };
}
