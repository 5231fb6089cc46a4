// graphql-sse (GraphQL over Server-Sent Events, distinct connections mode): delivery,
// groups removed with the stream, and token refresh through the headers function on a 401.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient } from 'graphql-sse';
import {
  EVENTS, EXPIRED, Inbox, ORDER_EVENTS, connectRedis, httpUrl, idsOf, newTenant, sleep, token,
} from './lib/harness.mjs';

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** A graphql-sse client that the test disposes of; `statuses` records every HTTP answer. */
function client(t, options) {
  const statuses = [];
  const sse = createClient({
    url: httpUrl,
    retry: () => sleep(50),
    fetchFn: async (input, init) => {
      const response = await fetch(input, init);
      statuses.push(response.status);
      return response;
    },
    ...options,
  });
  t.after(() => sse.dispose());
  return { sse, statuses };
}

test('events and orderEvents stream over SSE; closing a stream removes its group', async (t) => {
  const tenant = newTenant();
  const { sse, statuses } = client(t, { headers: { authorization: `Bearer ${token(tenant)}` } });
  const events = new Inbox();
  const orders = new Inbox();
  const stopEvents = sse.subscribe({ query: EVENTS }, events);
  const stopOrders = sse.subscribe({ query: ORDER_EVENTS, variables: { orderId: 'o-1' } }, orders);
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
  assert.deepEqual(statuses, [200, 200]);

  stopEvents();
  await redis.waitForGroups(tenant, 1);
  stopOrders();
  await redis.waitForGroups(tenant, 0);
});

test('a 401 is retried with fresh headers, then events arrive', async (t) => {
  const tenant = newTenant();
  const tokens = [EXPIRED(tenant), token(tenant)];
  const { sse, statuses } = client(t, {
    headers: async () => ({ authorization: `Bearer ${tokens.shift()}` }),
    retryAttempts: 2,
  });
  const events = new Inbox();
  sse.subscribe({ query: EVENTS, variables: { types: ['order_*'] } }, events);
  await redis.waitForGroups(tenant, 1);

  const published = await redis.publishMix(tenant);

  assert.deepEqual(idsOf((await events.take(2)).map((r) => r.data.events)), published.orders);
  assert.deepEqual(statuses, [401, 200]);
  assert.equal(tokens.length, 0);
});

test('without retries a 401 reaches the sink as a NetworkError with the response', async (t) => {
  const tenant = newTenant();
  const { sse } = client(t, { retryAttempts: 0 });
  const events = new Inbox();
  sse.subscribe({ query: EVENTS }, events);

  const error = await events.firstError();
  assert.equal(error.name, 'NetworkError');
  assert.equal(error.response.status, 401);
  assert.deepEqual(await redis.groups(tenant), []);
});

test('a bad argument ends the stream with the coded error, then completes', async (t) => {
  const tenant = newTenant();
  const { sse } = client(t, { headers: { authorization: `Bearer ${token(tenant)}` } });
  const events = new Inbox();
  sse.subscribe({ query: EVENTS, variables: { after: 'not-an-id' } }, events);

  const [result] = await events.take(1);
  assert.equal(result.errors[0].extensions.code, 'BAD_USER_INPUT');
  await sleep(100);
  assert.ok(events.completed);
  assert.deepEqual(await redis.groups(tenant), []);
});
