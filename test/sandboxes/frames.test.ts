/**
 * The frame reader between the broker and its sandbox processes: frames
 * split or joined arbitrarily are reassembled; an oversized or non-JSON
 * frame stops the reader (the broker then kills the process).
 */
import { describe, expect, it } from 'vitest';
import { encodeFrame, FrameReader } from '../../sandboxes/frames.ts';

function reader(max = 1024) {
  const messages: unknown[] = [];
  const errors: string[] = [];
  const r = new FrameReader(max, (m) => messages.push(m), (e) => errors.push(e.message));
  return { r, messages, errors };
}

describe('FrameReader', () => {
  it('reassembles frames split at every byte and joined in one chunk', () => {
    const bytes = Buffer.concat([encodeFrame({ t: 'a', n: 1 }), encodeFrame({ t: 'b', s: 'é'.repeat(50) }), encodeFrame([])]);
    const byByte = reader();
    for (const byte of bytes) byByte.r.push(Buffer.from([byte]));
    const whole = reader();
    whole.r.push(bytes);
    for (const { messages, errors } of [byByte, whole]) {
      expect(messages).toEqual([{ t: 'a', n: 1 }, { t: 'b', s: 'é'.repeat(50) }, []]);
      expect(errors).toEqual([]);
    }
  });

  it('refuses a frame over the limit before buffering it', () => {
    const { r, messages, errors } = reader(16);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(1 << 30);
    r.push(header);
    expect(errors).toEqual([`frame of ${1 << 30} bytes exceeds the 16-byte limit`]);
    r.push(encodeFrame({ t: 'x' }));
    expect(messages).toEqual([]);
  });

  it('refuses a frame that is not JSON', () => {
    const { r, errors } = reader();
    const body = Buffer.from('{not json');
    const header = Buffer.alloc(4);
    header.writeUInt32BE(body.length);
    r.push(Buffer.concat([header, body]));
    expect(errors[0]).toMatch(/^frame is not JSON/);
  });
});
