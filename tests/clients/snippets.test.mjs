// The README's client snippets (tests/clients/snippets), run as a user would run them:
// `GATEWAY_URL=... TOKEN=... node snippets/X.mjs`, printing one JSON event per line.
// tests/test_readme_snippets.py checks that the README shows these very files.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { after, before, test } from 'node:test';
import { connectRedis, httpUrl, idsOf, newTenant, token, waitFor } from './lib/harness.mjs';

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** Run a snippet; its stdout lines, parsed, collect in `lines`. Killed when the test ends. */
function run(t, snippet, tenant) {
  const child = spawn(process.execPath, [new URL(`snippets/${snippet}`, import.meta.url).pathname], {
    env: { ...process.env, GATEWAY_URL: httpUrl, TOKEN: token(tenant) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = [];
  let stderr = '';
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line)));
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  t.after(() => child.kill());
  return { lines, stderr: () => stderr };
}

async function received(output, count) {
  await waitFor(() => (output.lines.length >= count ? true : undefined), 10_000, `${count} lines`);
  return output.lines;
}

test('the Apollo snippet prints stats, then every order event', async (t) => {
  const tenant = newTenant();
  const output = run(t, 'apollo.mjs', tenant);
  await redis.waitForGroups(tenant, 1);

  const published = await redis.publishMix(tenant);

  const events = await received(output, 2);
  assert.deepEqual(idsOf(events), published.orders);
  assert.deepEqual(events.map((e) => [e.type, e.orderId, e.status]), [
    ['order_created', 'o-1', 'pending'],
    ['order_updated', 'o-1', 'paid'],
  ]);
  assert.match(output.stderr(), /^stats: \{ __typename: 'Stats', connections: 0, subscriptions: 0 \}/); // asked before subscribing
});

test('the urql snippet prints the order events and tool calls', async (t) => {
  const tenant = newTenant();
  const output = run(t, 'urql.mjs', tenant);
  await redis.waitForGroups(tenant, 1);

  const published = await redis.publishMix(tenant);

  const events = await received(output, 3);
  assert.deepEqual(idsOf(events), published.all);
  assert.deepEqual(events.map((e) => e.tenantId), [tenant, tenant, tenant]);
});
