// urql: subscriptions through graphql-ws, queries over fetch.
// npm install @urql/core graphql-ws ws   (ws only on Node: browsers have WebSocket)
import { Client, fetchExchange, subscriptionExchange } from '@urql/core';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const url = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8000/graphql';
const token = process.env.TOKEN;

const ws = createClient({
  url: url.replace(/^http/, 'ws'),
  webSocketImpl: WebSocket,
  connectionParams: { authorization: `Bearer ${token}` },
});
const client = new Client({
  url,
  fetchOptions: { headers: { authorization: `Bearer ${token}` } },
  exchanges: [
    subscriptionExchange({
      forwardSubscription: (request) => ({
        subscribe: (sink) => ({ unsubscribe: ws.subscribe({ ...request, query: request.query ?? '' }, sink) }),
      }),
    }),
    fetchExchange,
  ],
  // No WebSockets where you run? Drop subscriptionExchange and set `fetchSubscriptions: true`:
  // subscriptions then stream over HTTP (GraphQL over SSE).
});

const EVENTS = 'subscription($types: [String!]) { events(types: $types) { id type tenantId payload } }';
client.subscription(EVENTS, { types: ['order_*', 'tool_call'] }).subscribe(({ data, error }) => {
  if (error) console.error(error.message);
  else console.log(JSON.stringify(data.events));
});
