/**
 * Length-prefixed JSON frames: a 4-byte big-endian length, then that many
 * bytes of UTF-8 JSON. Used on the pipe between the broker and its sandbox
 * processes instead of Node's IPC channel because the reader bounds every
 * frame: a sandbox process that has been taken over cannot make the broker
 * buffer an unbounded message.
 *
 * @example
 *   const reader = new FrameReader(8 << 20, (message) => handle(message), (error) => kill(error));
 *   socket.on('data', (chunk) => reader.push(chunk));
 *   socket.write(encodeFrame({ t: 'ready' }));
 */
export function encodeFrame(message: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.byteLength);
  return Buffer.concat([header, body]);
}

export class FrameReader {
  private readonly maxBytes: number;
  private readonly onMessage: (message: unknown) => void;
  private readonly onError: (error: Error) => void;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed = false;

  constructor(maxBytes: number, onMessage: (message: unknown) => void, onError: (error: Error) => void) {
    this.maxBytes = maxBytes;
    this.onMessage = onMessage;
    this.onError = onError;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.byteLength;
    while (this.buffered >= 4) {
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length > this.maxBytes) return this.fail(new Error(`frame of ${length} bytes exceeds the ${this.maxBytes}-byte limit`));
      if (this.buffered < 4 + length) return;
      const frame = this.take(4 + length).subarray(4);
      let message: unknown;
      try {
        message = JSON.parse(frame.toString('utf8'));
      } catch (error) {
        return this.fail(new Error(`frame is not JSON: ${(error as Error).message}`));
      }
      this.onMessage(message);
      if (this.failed) return;
    }
  }

  private fail(error: Error): void {
    this.failed = true;
    this.chunks = [];
    this.buffered = 0;
    this.onError(error);
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.byteLength < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const frame = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.byteLength > 0 ? [rest] : [];
    this.buffered = rest.byteLength;
    return frame;
  }
}
