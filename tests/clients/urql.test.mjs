// urql (@urql/core): subscriptionExchange over graphql-ws, fetchExchange for queries and for
// subscriptions over HTTP (fetchSubscriptions), and the errors each reports.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Client, fetchExchange, subscriptionExchange } from '@urql/core';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import {
  EVENTS, EXPIRED, Inbox, ORDER_EVENTS, STATS, connectRedis, httpUrl, idsOf, newTenant, sleep, token, wsUrl,
} from './lib/harness.mjs';

let redis;
before(async () => {
  redis = await connectRedis();
});
after(() => redis.close());

/** urql with its subscriptions forwarded to a graphql-ws client, as urql's docs set it up. */
function urqlOverWs(t, tenant, connectionParams, options = {}) {
  const ws = createClient({ url: wsUrl, webSocketImpl: WebSocket, connectionParams, retryWait: () => sleep(50), ...options });
  t.after(() => ws.dispose());
  return new Client({
    url: httpUrl,
    fetchOptions: { headers: { authorization: `Bearer ${token(tenant)}` } },
    exchanges: [
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query || '' };
          return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(input, sink) }) };
        },
      }),
      fetchExchange,
    ],
  });
}

/** client.subscription(...) into an Inbox of urql results; unsubscribed when the test ends. */
function subscribe(t, client, query, variables = {}) {
  const inbox = new Inbox();
  const subscription = client.subscription(query, variables).subscribe(inbox.next);
  t.after(() => subscription.unsubscribe());
  return { inbox, subscription };
}

const dataOf = (results, field) =>
  results.map((result) => {
    if (result.error) throw result.error;
    return result.data[field];
  });

test('subscriptionExchange over graphql-ws delivers events and orderEvents; stats over fetch', async (t) => {
  const tenant = newTenant();
  const client = urqlOverWs(t, tenant, { authorization: `Bearer ${token(tenant)}` });
  const events = subscribe(t, client, EVENTS);
  const orders = subscribe(t, client, ORDER_EVENTS, { orderId: 'o-1' });
  await redis.waitForGroups(tenant, 2);

  const stats = await client.query(STATS, {}, { requestPolicy: 'network-only' }).toPromise();
  assert.equal(stats.error, undefined);
  assert.equal(stats.data.stats.subscriptions, 2);

  const published = await redis.publishMix(tenant);

  const received = dataOf(await events.inbox.take(3), 'events');
  assert.deepEqual(idsOf(received), published.all);
  assert.deepEqual(received.map((e) => e.type), ['order_created', 'tool_call', 'order_updated']);
  assert.deepEqual(idsOf(dataOf(await orders.inbox.take(2), 'orderEvents')), published.orders);
  await sleep(200);
  assert.equal(events.inbox.items.length, 3);
  assert.equal(orders.inbox.items.length, 2);

  events.subscription.unsubscribe();
  orders.subscription.unsubscribe();
  await redis.waitForGroups(tenant, 0);
});

test('fetchSubscriptions: urql subscribes over HTTP without a WebSocket', async (t) => {
  const tenant = newTenant();
  const client = new Client({
    url: httpUrl,
    fetchSubscriptions: true,
    fetchOptions: { headers: { authorization: `Bearer ${token(tenant)}` } },
    exchanges: [fetchExchange],
  });
  const events = subscribe(t, client, EVENTS);
  const orders = subscribe(t, client, ORDER_EVENTS);
  await redis.waitForGroups(tenant, 2);

  const published = await redis.publishMix(tenant);

  assert.deepEqual(idsOf(dataOf(await events.inbox.take(3), 'events')), published.all);
  assert.deepEqual(idsOf(dataOf(await orders.inbox.take(2), 'orderEvents')), published.orders);

  events.subscription.unsubscribe();
  orders.subscription.unsubscribe();
  await redis.waitForGroups(tenant, 0);
});

test('a query without a valid token is a network error with the 401 response', async () => {
  const client = new Client({ url: httpUrl, exchanges: [fetchExchange] });

  const result = await client.query(STATS, {}).toPromise();

  assert.equal(result.data, undefined);
  assert.ok(result.error.networkError, String(result.error));
  assert.equal(result.error.response.status, 401);
});

test('a rejected socket reaches the subscription as a network error carrying the 4403 close', async (t) => {
  const tenant = newTenant();
  const client = urqlOverWs(t, tenant, { authorization: `Bearer ${EXPIRED(tenant)}` }, { retryAttempts: 0 });
  const events = subscribe(t, client, EVENTS);

  const [result] = await events.inbox.take(1);
  assert.equal(result.data, undefined);
  assert.equal(result.error.networkError.code, 4403);
  assert.equal(result.error.networkError.reason, 'Forbidden');
  assert.deepEqual(await redis.groups(tenant), []);
});
