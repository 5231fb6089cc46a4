// subscriptions-transport-ws (the legacy graphql-ws protocol): delivery, and connection_error on a bad token.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import WebSocket from 'ws';
import {
  EVENTS, EXPIRED, Inbox, ORDER_EVENTS, connectRedis, idsOf, newTenant, sleep, token, waitFor, wsUrl,
} from './lib/harness.mjs';

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** A legacy client that the test closes however it ends. */
function client(t, options) {
  const legacy = new SubscriptionClient(wsUrl, { reconnect: false, ...options }, WebSocket);
  t.after(() => legacy.close());
  return legacy;
}

test('events gets every event and orderEvents only the order events, in stream order', async (t) => {
  const tenant = newTenant();
  const legacy = client(t, { connectionParams: { authorization: `Bearer ${token(tenant)}` } });
  const events = new Inbox();
  const orders = new Inbox();
  legacy.request({ query: EVENTS }).subscribe(events);
  legacy.request({ query: ORDER_EVENTS, variables: { orderId: 'o-1' } }).subscribe(orders);
  await redis.waitForGroups(tenant, 2);

  const published = await redis.publishMix(tenant);

  const received = (await events.take(3)).map((result) => result.data.events);
  assert.deepEqual(idsOf(received), published.all);
  assert.deepEqual(received.map((e) => e.type), ['order_created', 'tool_call', 'order_updated']);
  const orderEvents = (await orders.take(2)).map((result) => result.data.orderEvents);
  assert.deepEqual(idsOf(orderEvents), published.orders);
  assert.deepEqual(orderEvents.map((e) => e.status), ['pending', 'paid']);
  await sleep(200);
  assert.equal(events.items.length, 3);
  assert.equal(orders.items.length, 2);

  legacy.close();
  await redis.waitForGroups(tenant, 0);
});

test('a token in connectionParams under "token" works too', async (t) => {
  const tenant = newTenant();
  const legacy = client(t, { connectionParams: { token: token(tenant) } });
  const events = new Inbox();
  legacy.request({ query: EVENTS, variables: { types: ['order_*'] } }).subscribe(events);
  await redis.waitForGroups(tenant, 1);

  const published = await redis.publishMix(tenant);

  assert.deepEqual(idsOf((await events.take(2)).map((r) => r.data.events)), published.orders);
});

test('a bad token gets connection_error, which the client hands to connectionCallback', async (t) => {
  const tenant = newTenant();
  const rejections = [];
  const legacy = client(t, {
    connectionParams: { authorization: `Bearer ${EXPIRED(tenant)}` },
    connectionCallback: (error) => rejections.push(error),
  });
  const events = new Inbox();
  legacy.request({ query: EVENTS }).subscribe(events);

  await waitFor(() => (rejections.length ? true : undefined), 5_000, 'connectionCallback');
  assert.deepEqual(rejections, [{ message: 'Forbidden' }]);
  await sleep(200);
  assert.deepEqual(events.items, []);
  assert.deepEqual(await redis.groups(tenant), []);
});
