/**
 * Fake credentials for the filter tests, assembled from pieces so that the
 * repository itself does not look like a leak to secret scanners. None of
 * these is, or was, a real credential.
 */
export const j = (...parts: string[]) => parts.join('');

export const SAMPLES = {
  awsAccessKey: j('AKIA', 'IOSFODNN7', 'EXAMPLE'),
  awsSessionKey: j('ASIA', 'Y34FZKBOKMUTVV7A'),
  awsSecret: j('wJalrXUtnFEMI/K7MDENG/', 'bPxRfiCYEXAMPLEKEY'),
  github: j('gh', 'p_', 'R2d2C3poBB8LukeLeiaHanSolo4Chewbacca'),
  githubOauth: j('gh', 'o_', '16C7e42F292c6912E7710c838347Ae178B4a'),
  githubPat: j('github', '_pat_', '11ABCDEFG0123456789_', 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcde'),
  slack: j('xo', 'xb-', '123456789012-1234567890123-', 'AbCdEfGhIjKlMnOpQrStUvWx'),
  stripe: j('sk', '_live_', '4eC39HqLyjWDarjtT1zdp7dc'),
  stripeRestricted: j('rk', '_live_', '51H8sK2eZvKYlo2C0aBcDeFg'),
  google: j('AI', 'za', 'SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY'),
  anthropic: j('sk-', 'ant-', 'api03-', 'Xy7Kq2LmNp4Rs6Tu8Vw0Yz1Ab3Cd5Ef7Gh9Ij1Kl3Mn5Op7Qr9St1Uv3Wx5Yz7Ab9Cd1Ef3Gh5Ij7Kl9Mn1Op3Qr5St7Uv9Wx1Yz3Ab5-AA'),
  openai: j('sk-', 'proj-', 'Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAB7cDE0fGH3iJK6lMN9oPQ2rST5uVW8xYZ'),
  openaiLegacy: j('sk-', 'Q2xk8PzR7mN3vB6cX1zL', 'T3Blbk', 'FJ', 'a9S8d7F6g5H4j3K2l1Z0x9C8'),
  jwt: j(
    'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9',
    '.',
    'eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ',
    '.',
    'SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
  ),
  pemBody: 'MIIEowIBAAKCAQEA7bq1Vh0dZx3kqmKzX5n0c7Y2nq8Qe6m1oF\nq2U9Vx0m4kL8cZp3nB7sR1tW6yH2jD5gF9aE0uI4oP7lK3mN==',
};

export function pem(type = 'RSA ', body = SAMPLES.pemBody, newline = '\n'): string {
  return `-----BEGIN ${type}PRIVATE KEY-----${newline}${body.replaceAll('\n', newline)}${newline}-----END ${type}PRIVATE KEY-----`;
}

