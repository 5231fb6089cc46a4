// graphql-ws (the graphql-transport-ws protocol): delivery, and token refresh across reconnects.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import {
  EVENTS, EXPIRED, Inbox, ORDER_EVENTS, connectRedis, idsOf, newTenant, sleep, token, waitFor, wsUrl,
} from './lib/harness.mjs';

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** A graphql-ws client that the test disposes of however it ends. */
function client(t, options) {
  const ws = createClient({ url: wsUrl, webSocketImpl: WebSocket, retryWait: () => sleep(50), ...options });
  t.after(() => ws.dispose());
  return ws;
}

test('events gets every event and orderEvents only the order events, in stream order', async (t) => {
  const tenant = newTenant();
  const ws = client(t, { connectionParams: { authorization: `Bearer ${token(tenant)}` } });
  const events = new Inbox();
  const orders = new Inbox();
  ws.subscribe({ query: EVENTS }, events);
  ws.subscribe({ query: ORDER_EVENTS, variables: { orderId: 'o-1' } }, orders);
  await redis.waitForGroups(tenant, 2);

  const published = await redis.publishMix(tenant);

  const received = (await events.take(3)).map((result) => result.data.events);
  assert.deepEqual(idsOf(received), published.all);
  assert.deepEqual(received.map((e) => e.type), ['order_created', 'tool_call', 'order_updated']);
  assert.deepEqual(received[1].payload, { tool: 'search' });
  assert.ok(received.every((e) => e.tenantId === tenant));
  const orderEvents = (await orders.take(2)).map((result) => result.data.orderEvents);
  assert.deepEqual(idsOf(orderEvents), published.orders);
  assert.deepEqual(orderEvents.map((e) => [e.orderId, e.status]), [['o-1', 'pending'], ['o-1', 'paid']]);
  await sleep(200);
  assert.equal(events.items.length, 3);
  assert.equal(orders.items.length, 2);

  await ws.dispose();
  await redis.waitForGroups(tenant, 0); // ephemeral groups are removed with the connection
});

test('a 4403 on a bad token is retried with fresh connectionParams, then events arrive', async (t) => {
  const tenant = newTenant();
  const tokens = [EXPIRED(tenant), token(tenant)];
  const closes = [];
  const ws = client(t, {
    connectionParams: async () => ({ authorization: `Bearer ${tokens.shift()}` }),
    retryAttempts: 3,
    on: { closed: (event) => closes.push([event.code, event.reason]) },
  });
  const events = new Inbox();
  ws.subscribe({ query: EVENTS }, events);
  await redis.waitForGroups(tenant, 1);

  const first = await redis.publish(tenant, 'order_created', { order_id: 'o-7' });
  const second = await redis.publish(tenant, 'tool_call');

  assert.deepEqual(idsOf((await events.take(2)).map((r) => r.data.events)), [first, second]);
  assert.deepEqual(closes, [[4403, 'Forbidden']]);
  assert.equal(tokens.length, 0); // the second, fresh token was used for the retry
  assert.deepEqual(events.errors, []);
});

test('when the connected token expires the socket closes 4403 and the client reconnects with a fresh one', async (t) => {
  const tenant = newTenant();
  const tokens = [token(tenant, { ttl: 2 }), token(tenant)];
  const closes = [];
  const ws = client(t, {
    connectionParams: async () => ({ authorization: `Bearer ${tokens.shift()}` }),
    retryAttempts: 3,
    on: { closed: (event) => closes.push([event.code, event.reason]) },
  });
  const events = new Inbox();
  ws.subscribe({ query: EVENTS }, events);
  const [firstGroup] = await redis.waitForGroups(tenant, 1);
  const before = await redis.publish(tenant, 'order_created', { order_id: 'o-1' });
  await events.take(1);

  await waitFor(() => (closes.length ? true : undefined), 5_000, 'the expiry close');
  // graphql-ws subscribes again on the new connection: a new group replaces the old one
  await waitFor(async () => {
    const groups = await redis.groups(tenant);
    return groups.length === 1 && groups[0].name !== firstGroup.name ? true : undefined;
  });
  const afterwards = await redis.publish(tenant, 'order_updated', { order_id: 'o-1', status: 'paid' });

  assert.deepEqual(idsOf((await events.take(2)).map((r) => r.data.events)), [before, afterwards]);
  assert.deepEqual(closes, [[4403, 'Token expired']]);
  assert.equal(tokens.length, 0);
  assert.deepEqual(events.errors, []);
});

test('with retries off, the rejection reaches the subscriber as the 4403 close event', async (t) => {
  const tenant = newTenant();
  const ws = client(t, { connectionParams: { authorization: 'Bearer not-a-jwt' }, retryAttempts: 0 });
  const events = new Inbox();
  ws.subscribe({ query: EVENTS }, events);

  const error = await events.firstError();
  assert.equal(error.code, 4403);
  assert.equal(error.reason, 'Forbidden');
  assert.deepEqual(await redis.groups(tenant), []);
});
