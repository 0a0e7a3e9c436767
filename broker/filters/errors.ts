/**
 * The filter stage's refusals. Both are Denials (stage `filter`) with the
 * stable codes the front door already knows, so the pipeline can fail closed
 * with `asDenial` or branch on `code`, and tests can check the fields.
 *
 * @example
 *   try { filter.filter(result, obligations); }
 *   catch (error) { if (error instanceof ResultTooLarge) console.log(error.measure, error.size, error.limit); throw error; }
 */
import { Denial } from '../errors.ts';

/** Which bound was exceeded. */
export type SizeMeasure =
  /** The filtered result's RFC 8785 canonical JSON, in bytes, against `obligations.max_result_bytes`. */
  | 'result_bytes'
  /** One string's length in UTF-16 code units, against `max_scan_chars`: too large to scan, so not delivered. */
  | 'item_chars'
  /** All strings scanned in one result, in UTF-16 code units, against `max_total_scan_chars`. */
  | 'total_scan_chars'
  /** Nesting depth of the result's JSON. */
  | 'depth';

/** `BASTION_RESULT_TOO_LARGE`: the result, or something in it, is over a bound. */
export class ResultTooLarge extends Denial {
  readonly measure: SizeMeasure;
  readonly size: number;
  readonly limit: number;

  constructor(measure: SizeMeasure, size: number, limit: number, reason: string) {
    super('filter', 'BASTION_RESULT_TOO_LARGE', reason);
    this.measure = measure;
    this.size = size;
    this.limit = limit;
  }
}

/** `BASTION_OBLIGATION_UNSUPPORTED`: the policy asked for something this filter cannot do. */
export class ObligationUnsupported extends Denial {
  /** The obligation entry refused, made visible and cut to 100 characters. */
  readonly obligation: string;

  constructor(obligation: string, reason: string) {
    super('filter', 'BASTION_OBLIGATION_UNSUPPORTED', reason);
    this.obligation = obligation;
  }
}
