// Apollo Client: GraphQLWsLink for subscriptions, HttpLink for queries and for multipart subscriptions.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { ServerError } from '@apollo/client/errors';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
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

const isSubscription = ({ query }) => {
  const definition = getMainDefinition(query);
  return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
};

function wsLink(t, connectionParams, options = {}) {
  const ws = createClient({ url: wsUrl, webSocketImpl: WebSocket, connectionParams, retryWait: () => sleep(50), ...options });
  t.after(() => ws.dispose());
  return new GraphQLWsLink(ws);
}

const apollo = (link) => new ApolloClient({ cache: new InMemoryCache(), link });
const httpLink = (tenant) =>
  new HttpLink({ uri: httpUrl, headers: tenant ? { authorization: `Bearer ${token(tenant)}` } : {} });

/** client.subscribe(...) into an Inbox; unsubscribed when the test ends. */
function subscribe(t, client, query, variables) {
  const inbox = new Inbox();
  const subscription = client.subscribe({ query: gql(query), variables }).subscribe(inbox);
  t.after(() => subscription.unsubscribe());
  return { inbox, subscription };
}

const dataOf = (results, field) =>
  results.map((result) => {
    if (result.error) throw result.error;
    return result.data[field];
  });

test('GraphQLWsLink delivers events and orderEvents; HttpLink runs stats alongside', async (t) => {
  const tenant = newTenant();
  const link = ApolloLink.split(
    isSubscription,
    wsLink(t, { authorization: `Bearer ${token(tenant)}` }),
    httpLink(tenant),
  );
  const client = apollo(link);
  const events = subscribe(t, client, EVENTS);
  const orders = subscribe(t, client, ORDER_EVENTS, { orderId: 'o-1' });
  await redis.waitForGroups(tenant, 2);

  const { data } = await client.query({ query: gql(STATS), fetchPolicy: 'no-cache' });
  assert.equal(data.stats.connections, 1);
  assert.equal(data.stats.subscriptions, 2);
  assert.deepEqual(data.stats.tenants.map((s) => s.tenantId), [tenant]);

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

test('GraphQLWsLink: a 4403 is retried with a fresh token from connectionParams', async (t) => {
  const tenant = newTenant();
  const tokens = [EXPIRED(tenant), token(tenant)];
  const client = apollo(wsLink(t, async () => ({ authorization: `Bearer ${tokens.shift()}` }), { retryAttempts: 2 }));
  const events = subscribe(t, client, EVENTS);
  await redis.waitForGroups(tenant, 1);

  const id = await redis.publish(tenant, 'order_created', { order_id: 'o-2' });

  assert.deepEqual(idsOf(dataOf(await events.inbox.take(1), 'events')), [id]);
  assert.equal(tokens.length, 0);
});

test('GraphQLWsLink without retries reports the 4403 close as the subscription error', async (t) => {
  const tenant = newTenant();
  const client = apollo(wsLink(t, { authorization: `Bearer ${EXPIRED(tenant)}` }, { retryAttempts: 0 }));
  const events = subscribe(t, client, EVENTS);

  const [result] = await events.inbox.take(1);
  assert.equal(result.error.message, 'Socket closed with event 4403 Forbidden');
  assert.equal(result.data, undefined);
});

test('HttpLink subscribes over multipart HTTP: events and orderEvents, groups gone on unsubscribe', async (t) => {
  const tenant = newTenant();
  const client = apollo(httpLink(tenant));
  const events = subscribe(t, client, EVENTS);
  const orders = subscribe(t, client, ORDER_EVENTS, { orderId: 'o-1' });
  await redis.waitForGroups(tenant, 2);

  const published = await redis.publishMix(tenant);

  assert.deepEqual(idsOf(dataOf(await events.inbox.take(3), 'events')), published.all);
  assert.deepEqual(idsOf(dataOf(await orders.inbox.take(2), 'orderEvents')), published.orders);
  await sleep(200);
  assert.equal(events.inbox.items.length, 3);
  assert.equal(orders.inbox.items.length, 2);

  events.subscription.unsubscribe();
  orders.subscription.unsubscribe();
  await redis.waitForGroups(tenant, 0);
});

test('HttpLink without a valid token: queries and multipart subscriptions get a 401 ServerError', async (t) => {
  const tenant = newTenant();
  const client = apollo(new HttpLink({ uri: httpUrl, headers: { authorization: `Bearer ${EXPIRED(tenant)}` } }));

  await assert.rejects(client.query({ query: gql(STATS) }), (error) => {
    assert.ok(ServerError.is(error), String(error));
    assert.equal(error.statusCode, 401);
    return true;
  });
  const events = subscribe(t, client, EVENTS);
  const [result] = await events.inbox.take(1);
  assert.ok(ServerError.is(result.error), String(result.error));
  assert.equal(result.error.statusCode, 401);
  assert.ok(events.inbox.completed);
  assert.deepEqual(await redis.groups(tenant), []);
});
