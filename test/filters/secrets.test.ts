/**
 * Secret and personal-data redaction (broker/filters/secrets.ts): what is
 * found, what must be left alone, which operator patterns are refused, and
 * that near-matching megabyte inputs finish. Pure unit tests.
 */
import { describe, expect, it } from 'vitest';
import {
  BUILTIN_KINDS,
  createSecretScanner,
  ExtraPatternSchema,
  patternRisk,
  PII_KINDS,
  SECRET_KINDS,
  type Redaction,
} from '../../broker/filters/secrets.ts';
import { j, pem, SAMPLES } from './samples.ts';

const scanner = createSecretScanner();
const SECRETS = new Set<string>(SECRET_KINDS);
const ALL = new Set<string>(BUILTIN_KINDS);

function ok(result: Redaction): { text: string; counts: Record<string, number> } {
  if (result.status !== 'ok') throw new Error(`expected ok, got ${JSON.stringify(result)}`);
  return result;
}

function redact(text: string, kinds: ReadonlySet<string> = SECRETS, key?: string) {
  const { text: out, counts } = ok(scanner.redact(text, kinds, key === undefined ? undefined : { key }));
  return { text: out, counts };
}

describe('built-in secret kinds', () => {
  const cases: [string, string, string][] = [
    ['aws_access_key', `id ${SAMPLES.awsAccessKey} here`, SAMPLES.awsAccessKey],
    ['aws_access_key', `temporary ${SAMPLES.awsSessionKey}`, SAMPLES.awsSessionKey],
    ['aws_secret_key', `aws_secret_access_key = ${SAMPLES.awsSecret}`, SAMPLES.awsSecret],
    ['aws_secret_key', `AWS_SECRET_ACCESS_KEY=${SAMPLES.awsSecret}`, SAMPLES.awsSecret],
    ['aws_secret_key', `{"SecretAccessKey": "${SAMPLES.awsSecret}"}`, SAMPLES.awsSecret],
    ['github_token', `token: ${SAMPLES.github}`, SAMPLES.github],
    ['github_token', `oauth ${SAMPLES.githubOauth}`, SAMPLES.githubOauth],
    ['github_token', `fine-grained ${SAMPLES.githubPat}`, SAMPLES.githubPat],
    ['slack_token', `SLACK=${SAMPLES.slack}`, SAMPLES.slack],
    ['stripe_key', `stripe ${SAMPLES.stripe}`, SAMPLES.stripe],
    ['stripe_key', `restricted ${SAMPLES.stripeRestricted}`, SAMPLES.stripeRestricted],
    ['google_api_key', `maps key ${SAMPLES.google}`, SAMPLES.google],
    ['anthropic_key', `ANTHROPIC_API_KEY ${SAMPLES.anthropic}`, SAMPLES.anthropic],
    ['openai_key', `OPENAI ${SAMPLES.openai}`, SAMPLES.openai],
    ['openai_key', `legacy ${SAMPLES.openaiLegacy}`, SAMPLES.openaiLegacy],
    ['jwt', `Cookie: session=${SAMPLES.jwt}; Path=/`, SAMPLES.jwt],
    ['private_key', `key:\n${pem()}\ndone`, pem()],
    ['private_key', pem('OPENSSH '), pem('OPENSSH ')],
    ['private_key', pem('EC '), pem('EC ')],
    ['private_key', pem('ENCRYPTED '), pem('ENCRYPTED ')],
    ['private_key', pem(''), pem('')],
    ['bearer_token', `Authorization: Bearer ${j('opaque', '4f9a2c7e1b3d5f8a')}`, j('opaque', '4f9a2c7e1b3d5f8a')],
    ['bearer_token', `curl -H "Authorization: Basic ${j('dXNlcjpw', 'YXNzd29yZA==')}"`, j('dXNlcjpw', 'YXNzd29yZA==')],
    ['generic_secret', 'password=hunter2', 'hunter2'],
    ['generic_secret', 'DB_PASSWORD="correct horse battery"', 'correct horse battery'],
    ['generic_secret', 'database:\n  password: Tr0ub4dor&3\n', 'Tr0ub4dor&3'],
    ['generic_secret', '{"api_key": "k-1234-abcd"}', 'k-1234-abcd'],
    ['generic_secret', "client_secret='s3cr3t-value'", 's3cr3t-value'],
    ['generic_secret', 'SECRET_KEY_BASE=9f8e7d6c5b4a', '9f8e7d6c5b4a'],
    ['generic_secret', 'https://api.example/v1?api_key=abc123&x=1', 'abc123'],
  ];

  it.each(cases)('%s: %s', (kind, text, secret) => {
    const out = redact(text);
    expect(out.text).not.toContain(secret);
    expect(out.text).toContain(`[REDACTED:${kind}]`);
    expect(out.counts).toEqual({ [kind]: 1 });
  });

  it('keeps what surrounds a secret', () => {
    expect(redact(`before ${SAMPLES.awsAccessKey} after`).text).toBe('before [REDACTED:aws_access_key] after');
    expect(redact('password=hunter2 rest').text).toBe('password=[REDACTED:generic_secret] rest');
  });

  it('counts each finding', () => {
    const out = redact(`${SAMPLES.awsAccessKey} ${SAMPLES.awsSessionKey} ${SAMPLES.jwt} ${SAMPLES.github}`);
    expect(out.counts).toEqual({ aws_access_key: 2, jwt: 1, github_token: 1 });
  });

  it('names an overlap once, by the more specific kind', () => {
    const out = redact(`password=${SAMPLES.jwt}`);
    expect(out.counts).toEqual({ jwt: 1 });
    expect(out.text).toBe('password=[REDACTED:jwt]');
    const anthropic = redact(SAMPLES.anthropic);
    expect(anthropic.counts).toEqual({ anthropic_key: 1 });
  });

  it('redacts only the kinds asked for', () => {
    const out = redact(`${SAMPLES.awsAccessKey} ${SAMPLES.jwt}`, new Set(['jwt']));
    expect(out.text).toContain(SAMPLES.awsAccessKey);
    expect(out.counts).toEqual({ jwt: 1 });
    expect(redact(SAMPLES.jwt, new Set()).text).toBe(SAMPLES.jwt);
  });

  it('is idempotent: redacting redacted text changes nothing', () => {
    const once = redact(`${SAMPLES.awsAccessKey} password=hunter2 postgres://u:pw@h/db ${pem()}`);
    const twice = redact(once.text);
    expect(twice.text).toBe(once.text);
    expect(twice.counts).toEqual({});
  });
});

describe('PEM private keys', () => {
  it('redacts the whole block, header to footer', () => {
    const out = redact(`a\n${pem()}\nb`);
    expect(out.text).toBe('a\n[REDACTED:private_key]\nb');
  });

  it('redacts a key inside JSON with escaped newlines (a service-account file)', () => {
    const key = pem('', SAMPLES.pemBody, '\\n');
    const out = redact(`{"type": "service_account", "private_key": "${key}\\n", "client_email": "x@y.iam"}`);
    expect(out.text).not.toContain('MIIEowIBAAKCAQEA');
    expect(out.counts).toEqual({ private_key: 1 });
  });

  it('redacts a truncated key with no END marker up to where the base64 stops', () => {
    const out = redact(`-----BEGIN RSA PRIVATE KEY-----\n${SAMPLES.pemBody}\n(output truncated)`);
    expect(out.text).not.toContain('MIIEowIBAAKCAQEA');
    expect(out.text).not.toContain('q2U9Vx0m4kL8');
    expect(out.text).toContain('(output truncated)');
  });

  it('redacts encrypted PEM headers and body', () => {
    const text = '-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,2F6E\n\nMIIEpAIBAAKCAQEAq\n-----END RSA PRIVATE KEY-----';
    expect(redact(text).text).toBe('[REDACTED:private_key]');
  });

  it('redacts two keys separately and leaves public keys and certificates alone', () => {
    const cert = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----';
    const pub = '-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----';
    const out = redact(`${pem()}\n${cert}\n${pub}\n${pem('EC ')}`);
    expect(out.counts).toEqual({ private_key: 2 });
    expect(out.text).toContain(cert);
    expect(out.text).toContain(pub);
  });
});

describe('passwords in URLs', () => {
  it.each([
    ['postgres://admin:s3cr3t@db.internal:5432/app', 'postgres://admin:[REDACTED:url_password]@db.internal:5432/app'],
    ['redis://:hunter2@cache:6379/0', 'redis://:[REDACTED:url_password]@cache:6379/0'],
    ['https://user:p%40ss@example.com/path', 'https://user:[REDACTED:url_password]@example.com/path'],
    ['git clone https://bot:p@ss@git.example/repo.git', 'git clone https://bot:[REDACTED:url_password]@git.example/repo.git'],
    ['amqp://guest:guest@localhost', 'amqp://guest:[REDACTED:url_password]@localhost'],
  ])('%s keeps user and host', (text, expected) => {
    const out = redact(text);
    expect(out.text).toBe(expected);
    expect(out.counts).toEqual({ url_password: 1 });
  });

  it.each([
    'https://example.com:8443/path?x=1',
    'ssh://git@github.com/org/repo.git',
    'git@github.com:org/repo.git',
    'mailto:someone@example.com',
    'postgres://user:${DB_PASSWORD}@db/app',
    'https://user:****@host/',
    'see http://host/a:b@c for details',
  ])('leaves %s alone', (text) => {
    expect(redact(text).text).toBe(text);
  });
});

describe('generic assignments', () => {
  it.each([
    'password=${DB_PASSWORD}',
    'password: <your password here>',
    'password=****',
    'password = null',
    '"password": ""',
    'if (password == expected) return;',
    'password != other',
    'cat: /etc/passwd: No such file or directory',
    'Your password has been reset.',
    'The secret to good bread is time.',
    'password_hint is not set',
  ])('leaves %s alone', (text) => {
    expect(redact(text).text).toBe(text);
  });

  it('redacts a value under a secret-sounding key in structured data', () => {
    expect(redact('hunter2', SECRETS, 'password')).toEqual({ text: '[REDACTED:generic_secret]', counts: { generic_secret: 1 } });
    expect(redact('abc', SECRETS, 'clientSecret').counts).toEqual({ generic_secret: 1 });
    expect(redact(SAMPLES.awsSecret, SECRETS, 'SecretAccessKey').counts).toEqual({ aws_secret_key: 1 });
    expect(redact('alice', SECRETS, 'username').text).toBe('alice');
    expect(redact('${PW}', SECRETS, 'password').text).toBe('${PW}');
    expect(redact('', SECRETS, 'password').text).toBe('');
    expect(redact('hunter2', new Set(['jwt']), 'password').text).toBe('hunter2');
  });
});

describe('personal data (off unless asked)', () => {
  const pii = new Set<string>(PII_KINDS);

  it('is not redacted with the secret kinds', () => {
    const text = 'alice@example.com DE89 3704 0044 0532 0130 00 4111 1111 1111 1111 +1 415 555 2671';
    expect(redact(text).text).toBe(text);
  });

  it.each([
    ['email', 'write to alice.smith+tag@mail.example.co.uk today', 'alice.smith+tag@mail.example.co.uk'],
    ['iban', 'IBAN DE89 3704 0044 0532 0130 00.', 'DE89 3704 0044 0532 0130 00'],
    ['iban', 'pay GB82WEST12345698765432 now', 'GB82WEST12345698765432'],
    ['credit_card', 'card 4111 1111 1111 1111 exp 12/30', '4111 1111 1111 1111'],
    ['credit_card', 'amex 378282246310005', '378282246310005'],
    ['credit_card', 'mc 5500-0000-0000-0004', '5500-0000-0000-0004'],
    ['phone', 'call +1 (415) 555-2671 now', '+1 (415) 555-2671'],
    ['phone', 'tel: +49 30 12345678', '+49 30 12345678'],
    ['phone', 'office (415) 555-2671', '(415) 555-2671'],
    ['phone', 'office 415-555-2671', '415-555-2671'],
  ])('%s: %s', (kind, text, value) => {
    const out = redact(text, pii);
    expect(out.text).not.toContain(value);
    expect(out.counts).toEqual({ [kind]: 1 });
  });

  it.each([
    'IBAN DE89 3704 0044 0532 0130 01 (bad checksum)',
    'card 4111 1111 1111 1112 (bad Luhn)',
    'zeros 0000 0000 0000 0000',
    'timestamp 1700000000000 ms',
    'order 1234567890123456789',
    'date 2024-01-15 and time 12:30:45',
    'version 1.2.3.4 and ip 192.168.10.20',
    'uuid 123e4567-e89b-12d3-a456-426614174000',
    'user@localhost',
    'ratio +1.5 and +2',
  ])('leaves %s alone', (text) => {
    expect(redact(text, pii).text).toBe(text);
  });
});

describe('false positives with every kind on', () => {
  it.each([
    ['prose', 'The quick brown fox jumps over the lazy dog. Remember to rotate keys every 90 days; the API is rate-limited.'],
    ['uuids', 'ids: 550e8400-e29b-41d4-a716-446655440000, 6ba7b810-9dad-11d1-80b4-00c04fd430c8'],
    ['git SHAs', 'commit 8c761c6f0e2d4b7a9c1e3f5a7b9d1c3e5f7a9b1d (HEAD) parent a94a8fe5ccb19ba61c4c0873d391e987982fbbd3'],
    ['sha256', 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'],
    ['npm integrity', 'integrity sha512-9kFD9r3oqRjtYgoA2C7UlJ6nLW9PbXwJzD2Ou5f+QfdTeZ5o7yFmXOEWtsjf2gg7vOIwdcQCT8Ui2Osz3Q9Hg=='],
    ['base64 PNG', `data:image/png;base64,${'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='.repeat(4)}`],
    ['words near prefixes', 'task-list-item sk-learn-compatible-estimators AKIA-like ghp_short xoxb-your-token-here eyJ alone'],
    ['markdown link', 'see [docs](https://example.com/docs?page=2#section) and https://example.com:8080/'],
    ['code', 'const token = getToken(); if (apiKeyMissing) throw new Error("no key");'],
    ['kubernetes', 'pod/web-7d4b9c8f6-x2x9z Running 0 3d sha256:abcdef'],
  ])('%s', (_name, text) => {
    expect(ok(scanner.redact(text, ALL))).toEqual({ status: 'ok', text, counts: {} });
  });
});

describe('input bounds', () => {
  it('reports text over the scan limit as too large instead of scanning it', () => {
    const small = createSecretScanner({ maxScanChars: 16 });
    expect(small.redact('x'.repeat(17), SECRETS)).toEqual({ status: 'too_large', length: 17, limit: 16 });
    expect(small.redact('x'.repeat(16), SECRETS).status).toBe('ok');
  });

  it('refuses a kind it does not know', () => {
    expect(() => scanner.redact('x', new Set(['nope']))).toThrow(RangeError);
  });
});

describe('extra patterns', () => {
  it('redacts with an operator pattern', () => {
    const custom = createSecretScanner({ extra: [{ kind: 'employee_id', pattern: 'EMP-[0-9]{6}' }] });
    const out = ok(custom.redact('id EMP-123456 and EMP-12', new Set(['employee_id'])));
    expect(out).toEqual({ status: 'ok', text: 'id [REDACTED:employee_id] and EMP-12', counts: { employee_id: 1 } });
    expect(custom.kinds.has('employee_id')).toBe(true);
  });

  it('redacts only the first capturing group when there is one', () => {
    const custom = createSecretScanner({ extra: [{ kind: 'pin', pattern: 'PIN: ([0-9]{4})', ignore_case: true }] });
    expect(ok(custom.redact('pin: 1234', new Set(['pin']))).text).toBe('pin: [REDACTED:pin]');
  });

  it('accepts a reasonable pattern', () => {
    expect(ExtraPatternSchema.parse({ kind: 'ticket', pattern: '(?:TCK|INC)-[0-9]{4,8}' })).toEqual({
      kind: 'ticket',
      pattern: '(?:TCK|INC)-[0-9]{4,8}',
      ignore_case: false,
      enabled: true,
    });
  });

  it.each([
    ['over 512 characters', { kind: 'long', pattern: 'a'.repeat(513) }],
    ['that does not compile', { kind: 'broken', pattern: '([a-z]' }],
    ['invalid in unicode mode', { kind: 'brace', pattern: 'a{' }],
    ['nested quantifiers', { kind: 'nested', pattern: '(a{1,5}){1,5}' }],
    ['the classic (a+)+', { kind: 'classic', pattern: '(a+)+$' }],
    ['unbounded *', { kind: 'star', pattern: 'x[0-9]*' }],
    ['unbounded +', { kind: 'plus', pattern: 'x[0-9]+' }],
    ['unbounded {n,}', { kind: 'open', pattern: 'x[0-9]{2,}' }],
    ['a bound over 1024', { kind: 'big', pattern: 'x[0-9]{1,5000}' }],
    ['alternation under repetition', { kind: 'alt', pattern: '(?:a|ab){1,8}c' }],
    ['a backreference', { kind: 'backref', pattern: '(a)\\1' }],
    ['a named backreference', { kind: 'named', pattern: '(?<x>a)\\k<x>' }],
    ['a pattern matching the empty string', { kind: 'empty', pattern: 'a?' }],
    ['a built-in kind name', { kind: 'jwt', pattern: 'x' }],
    ['a group name', { kind: 'secrets', pattern: 'x' }],
    ['a bad kind name', { kind: 'Bad Kind', pattern: 'x' }],
    ['an unknown field', { kind: 'x', pattern: 'x', flags: 'g' }],
  ])('refuses a pattern %s', (_why, input) => {
    expect(ExtraPatternSchema.safeParse(input).success).toBe(false);
    expect(() => createSecretScanner({ extra: [input as never] })).toThrow();
  });

  it('explains why a pattern is risky', () => {
    expect(patternRisk('EMP-[0-9]{6}')).toBeUndefined();
    expect(patternRisk('[a-z+*]{1,8}\\+\\*')).toBeUndefined();
    expect(patternRisk('(?:ab){1,4}')).toBeUndefined();
    expect(patternRisk('(?:a[0-9]{2})?b')).toBeUndefined();
    expect(patternRisk('(a+)+')).toMatch(/unbounded/);
    expect(patternRisk('(?:a{1,3}){2}')).toMatch(/nested/);
    expect(patternRisk('(a)\\2')).toMatch(/backreference/);
  });
});

describe('pathological input: near-matches for every pattern finish', () => {
  const MB = 1 << 20;
  const fill = (unit: string, size = MB) => unit.repeat(Math.ceil(size / unit.length)).slice(0, size);
  const near: [string, string][] = [
    ['AKIA repeated', fill('AKIA')],
    ['AKIA then a long run', `AKIA${fill('A')}`],
    ['aws secret context repeated', fill('aws_secret_access_key=')],
    ['aws secret context then a long run', `aws_secret_access_key=${fill('a/')}`],
    ['ghp_ repeated', fill('ghp_')],
    ['github_pat_ then underscores', `github_pat_${fill('_')}`],
    ['xoxb- repeated', fill('xoxb-')],
    ['xoxb- then dashes', `xoxb-${fill('-')}`],
    ['sk_live_ repeated', fill('sk_live_')],
    ['AIza repeated', fill('AIza')],
    ['sk-ant- repeated', fill('sk-ant-')],
    ['sk- then a lowercase run', `sk-${fill('a')}`],
    ['BEGIN markers without END', fill('-----BEGIN RSA PRIVATE KEY-----\n')],
    ['BEGIN markers then one END', `${fill('-----BEGIN PRIVATE KEY-----')}-----END PRIVATE KEY-----`],
    ['BEGIN then a huge body', `-----BEGIN PRIVATE KEY-----${fill('A')}`],
    ['BEGIN with long type words', fill('-----BEGIN AAAA AAAA AAAA AAAA ')],
    ['eyJ repeated', fill('eyJ')],
    ['eyJ then a long run', `eyJ${fill('a')}`],
    ['JWT-like segments', fill('eyJaaaaa.eyJaaaaa.')],
    ['Bearer repeated', fill('Bearer ')],
    ['Authorization then a long run', `Authorization: Basic ${fill('a')}`],
    ['scheme:// repeated', fill('a://')],
    ['scheme://user: repeated', fill('a://a:')],
    ['URL userinfo without @', `http://u:${fill('a')}`],
    ['URL with many @', `a://a:${fill('@@')}`],
    ['password repeated', fill('password')],
    ['password= repeated', fill('password=')],
    ['password=" then backslashes', `password="${fill('\\')}`],
    ['password=" then escaped quotes', `password="${fill('\\"')}`],
    ['secret key suffixes', fill('secret_key_base_')],
    ['@ and letters', fill('a@')],
    ['dotted labels', `a@${fill('a.')}`],
    ['long local part then @', `${fill('a')}@`],
    ['IBAN prefix repeated', fill('DE89 ')],
    ['IBAN then a long run', `DE89${fill(' AAAA')}`],
    ['digits', fill('4')],
    ['digits and spaces', fill('4 ')],
    ['digits and dashes', fill('4-')],
    ['plus signs and digits', fill('+1')],
    ['plus then spaces', `+1${fill(' ')}`],
    ['area codes', fill('(555) ')],
    ['NANP fragments', fill('555-')],
    ['plain prose', fill('lorem ipsum dolor sit amet ')],
    ['base64', fill('QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=')],
  ];

  it.each(near)('%s', (_name, text) => {
    const out = scanner.redact(text, ALL);
    expect(out.status).toBe('ok');
  });

  it('an extra pattern near-match finishes', () => {
    const custom = createSecretScanner({ extra: [{ kind: 'ticket', pattern: '(?:TCK|INC)-[0-9]{4,8}' }] });
    expect(custom.redact(fill('TCK-123'), new Set(['ticket'])).status).toBe('ok');
  });
});
