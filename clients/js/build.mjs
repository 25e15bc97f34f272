// Writes client.mjs, the ES module, from client.js, the one source: the factory's body with
// an `export` in place of the classic-script wrapper. `node build.mjs --check` fails when
// client.mjs is not what this would write (the tests run it).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = (name) => fileURLToPath(new URL(name, import.meta.url));
const OPEN = '})(globalThis, function () {\n';
const CLOSE = '  return RedisWsBridge;\n});\n';

function generate(source) {
  const start = source.indexOf(OPEN);
  if (start < 0 || !source.endsWith(CLOSE)) {
    throw new Error('client.js: the wrapper is not where build.mjs expects it');
  }
  const header = source.slice(0, source.indexOf('(function (root, factory) {'));
  const body = source
    .slice(start + OPEN.length, source.length - CLOSE.length)
    .replace("  'use strict';\n\n", '')
    .split('\n')
    .map((line) => line.replace(/^ {2}/, ''))
    .join('\n');
  return `// Generated from client.js by build.mjs: edit client.js, then run \`node build.mjs\`.\n//\n${header}${body}export { RedisWsBridge };\nexport default RedisWsBridge;\n`;
}

const module = generate(readFileSync(here('client.js'), 'utf8'));
if (process.argv.includes('--check')) {
  if (readFileSync(here('client.mjs'), 'utf8') !== module) {
    console.error('client.mjs is out of date: run `node clients/js/build.mjs`');
    process.exit(1);
  }
} else {
  writeFileSync(here('client.mjs'), module);
}
