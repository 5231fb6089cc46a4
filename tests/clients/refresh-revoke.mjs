// graphql-ws (the graphql-transport-ws protocol): `refreshToken` over the socket it refreshes.
//
// Run by tests/test_refresh_revoke.py (its name does not end in .test.mjs, so that
// tests/test_node_clients.py does not run it a second time), with the same environment.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { EVENTS, Inbox, connectRedis, idsOf, newTenant, sleep, token, waitFor, wsUrl } from './lib/harness.mjs';

const REFRESH = 'mutation Refresh($token: String!) { refreshToken(token: $token) { tenantId userId expiresAt } }';
const RUN_MS = 10_000; // how long events are published, across the old token's expiry
const EVERY_MS = 500;

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** A token's `exp`, in unix seconds. */
const expOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url')).exp;

test('refreshToken moves the expiry of the connection and its subscription goes on without a gap', async (t) => {
  const tenant = newTenant();
  const short = token(tenant, { user: 'alice', ttl: 3 }); // expires 2 to 3 s from now
  const long = token(tenant, { user: 'alice', ttl: 600 });
  const closes = [];
  let connections = 0;
  const ws = createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { authorization: `Bearer ${short}` },
    retryAttempts: 0, // a close would reach the subscriber as an error, not be hidden by a reconnect
    on: {
      connected: () => { connections += 1; },
      closed: (event) => closes.push([event.code, event.reason]),
    },
  });
  t.after(() => ws.dispose());
  const events = new Inbox();
  ws.subscribe({ query: EVENTS }, events);
  await redis.waitForGroups(tenant, 1);

  const published = [];
  const started = Date.now();
  const producing = (async () => {
    while (Date.now() - started < RUN_MS) {
      published.push(await redis.publish(tenant, 'order_created', { order_id: `o-${published.length}` }));
      await sleep(EVERY_MS);
    }
  })();
  await events.take(1); // the subscription is live

  const answer = new Inbox();
  ws.subscribe({ query: REFRESH, variables: { token: long } }, answer);
  const [result] = await answer.take(1);
  await waitFor(() => (answer.completed ? true : undefined), 5_000, 'the mutation to complete');
  assert.ok(Date.now() / 1000 < expOf(short), 'the refresh was answered only after the old token expired');
  assert.deepEqual(answer.errors, []);
  const { expiresAt } = result.data.refreshToken;
  assert.deepEqual(result, { data: { refreshToken: { tenantId: tenant, userId: 'alice', expiresAt } } });
  assert.equal(Date.parse(expiresAt), expOf(long) * 1000);

  await producing;
  assert.ok(Date.now() / 1000 > expOf(short) + 5, 'the old token expired well before the last event');
  const received = (await events.take(published.length)).map((r) => r.data.events);
  assert.deepEqual(idsOf(received), published); // every event, in order: no gap at the refresh or the old exp
  await sleep(300);
  assert.equal(events.items.length, published.length); // and none twice
  assert.deepEqual(events.errors, []);
  assert.equal(events.completed, false);
  assert.deepEqual(closes, []); // the socket outlived the old token
  assert.equal(connections, 1); // one socket throughout
});
