// text-utils: pure functions over text. A classic script: it receives an
// empty `tools` object and defines one function per tool in plugin.json.
// Each tool gets its (schema-checked) arguments and returns JSON.
'use strict';

tools.word_count = ({ text }) => {
  const trimmed = text.trim();
  return {
    words: trimmed === '' ? 0 : trimmed.split(/\s+/u).length,
    characters: Array.from(text).length,
    lines: text === '' ? 0 : text.split('\n').length,
  };
};

tools.slugify = ({ text, max_length = 80 }) => {
  const slug = text
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, max_length)
    .replace(/-+$/, '');
  return { slug };
};

tools.json_format = ({ json, indent = 2 }) => {
  let value;
  try {
    value = JSON.parse(json);
  } catch (error) {
    throw new Error(`not a JSON document: ${error.message}`);
  }
  return { formatted: JSON.stringify(value, null, indent) };
};
