// The GraphQL-over-HTTP audit of the `graphql-http` package against /graphql: every MUST
// passes; SHOULD (and MAY) results are printed. The audit's requests carry a valid token
// (our /graphql answers 401 without one), added by the fetchFn wrapper.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { serverAudits } from 'graphql-http';
import { httpUrl, newTenant, token } from './lib/harness.mjs';

const bearer = `Bearer ${token(newTenant())}`;

function withToken(input, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', bearer);
  return fetch(input, { ...init, headers });
}

const audits = serverAudits({ url: httpUrl, fetchFn: withToken });
const results = [];

for (const audit of audits) {
  const level = audit.name.split(' ', 1)[0];
  test(audit.name, async () => {
    const result = await audit.fn();
    results.push({ level, ...result });
    if (level === 'MUST') assert.equal(result.status, 'ok', `${result.reason ?? ''}`);
  });
}

test('summary', () => {
  const counts = {};
  for (const { level, status } of results) {
    counts[level] ??= { ok: 0, warn: 0, error: 0 };
    counts[level][status] += 1;
  }
  console.log('graphql-http audit of %s:', httpUrl);
  for (const [level, count] of Object.entries(counts)) {
    console.log('  %s: %d ok, %d warn, %d error', level, count.ok, count.warn, count.error);
  }
  for (const { level, status, name, reason } of results) {
    if (status !== 'ok') console.log('  [%s %s] %s: %s', level, status, name, reason);
  }
  assert.equal(results.length, audits.length);
  assert.equal(counts.MUST.warn + counts.MUST.error, 0);
});
