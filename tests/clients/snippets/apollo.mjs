// Apollo Client 4: subscriptions over WebSocket (graphql-ws), queries over HTTP.
// npm install @apollo/client graphql graphql-ws rxjs ws   (ws only on Node: browsers have WebSocket)
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const url = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8000/graphql';
// Asked again on every reconnect: return a fresh token if yours can expire (the gateway closes with 4403).
const getToken = async () => process.env.TOKEN;

const wsLink = new GraphQLWsLink(
  createClient({
    url: url.replace(/^http/, 'ws'),
    webSocketImpl: WebSocket,
    connectionParams: async () => ({ authorization: `Bearer ${await getToken()}` }),
  }),
);
const httpLink = new HttpLink({ uri: url, headers: { authorization: `Bearer ${await getToken()}` } });
const isSubscription = ({ query }) => {
  const definition = getMainDefinition(query);
  return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
};
const client = new ApolloClient({ cache: new InMemoryCache(), link: ApolloLink.split(isSubscription, wsLink, httpLink) });

const { data } = await client.query({ query: gql`{ stats { connections subscriptions } }` });
console.error('stats:', data.stats);

client
  .subscribe({ query: gql`subscription { orderEvents { id type orderId status occurredAt } }` })
  .subscribe(({ data, error }) => {
    if (error) console.error(error.message);
    else console.log(JSON.stringify(data.orderEvents));
  });
