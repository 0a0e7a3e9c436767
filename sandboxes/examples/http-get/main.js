// http-get: one tool that uses the host's fetch capability. The request is
// made by Bastion, not here, and only to origins both this manifest and the
// operator allow; redirects elsewhere are refused by the host.
'use strict';

tools.get = async ({ url, max_chars = 20000 }, host) => {
  const response = await host.fetch(url, { method: 'GET' });
  const truncated = response.body.length > max_chars;
  host.log('info', `GET ${url} -> ${response.status}${truncated ? ' (truncated)' : ''}`);
  return {
    status: response.status,
    url: response.url,
    content_type: response.headers['content-type'] ?? null,
    body: truncated ? response.body.slice(0, max_chars) : response.body,
    truncated,
  };
};
