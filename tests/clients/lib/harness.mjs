// What every client test shares: the gateway under test, tokens, a producer, and waiting.
//
// pytest (tests/test_node_clients.py) starts a Redis and a gateway and passes them in:
//   GATEWAY_URL         http://127.0.0.1:PORT/graphql
//   GATEWAY_REDIS_URL   the Redis the gateway reads, where these tests XADD like a producer
//   GATEWAY_JWT_SECRET  the gateway's HS256 secret, to mint tokens for fresh tenants
//   GATEWAY_TOKEN_LOG   a file where every token minted here is appended, one a line: pytest
//                       checks that none of them ever reached the gateway's logs
import { createHmac, randomUUID } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { createCluster, createClient as createRedisClient } from 'redis';

export { sleep };

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through pytest (tests/test_node_clients.py)`);
  return value;
}

export const httpUrl = required('GATEWAY_URL');
export const wsUrl = httpUrl.replace(/^http/, 'ws');
const redisUrl = required('GATEWAY_REDIS_URL');
const secret = required('GATEWAY_JWT_SECRET');
const tokenLog = required('GATEWAY_TOKEN_LOG');
export const TIMEOUT_MS = 10_000;

const operations = new URL('../../../graphql/operations/', import.meta.url);
/** The committed example operations (graphql/operations), as clients would use them. */
export const EVENTS = readFileSync(new URL('events.graphql', operations), 'utf8');
export const ORDER_EVENTS = readFileSync(new URL('orderEvents.graphql', operations), 'utf8');
export const STATS = readFileSync(new URL('stats.graphql', operations), 'utf8');

export function newTenant() {
  return `t-${randomUUID().slice(0, 10)}`;
}

const base64url = (value) => Buffer.from(value).toString('base64url');

/** `jwt`, remembered for pytest's check that no log line holds a token. */
function issued(jwt) {
  appendFileSync(tokenLog, `${jwt}\n`);
  return jwt;
}

/** An HS256 JWT the gateway accepts (or, with a negative ttl, one that has expired). */
export function token(tenant, { user = 'u1', ttl = 3600, roles } = {}) {
  const claims = { tenant_id: tenant, user_id: user, exp: Math.floor(Date.now() / 1000) + ttl };
  if (roles) claims.roles = roles;
  const unsigned = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(JSON.stringify(claims))}`;
  return issued(`${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`);
}

export const EXPIRED = (tenant) => token(tenant, { ttl: -60 });
export const FORGED = (tenant) => issued(`${token(tenant).slice(0, -4)}AAAA`);

/** A Redis connection for the test file: the producer side and XINFO GROUPS. */
export async function connectRedis() {
  const client = redisClient(redisUrl);
  client.on('error', () => {}); // reported by the command that fails
  await client.connect();
  return new Producer(client);
}

/** A client for `url`: one server, or a cluster named by its seed nodes
 *  (`redis+cluster://host:port,host:port`, the gateway's own URL form). */
function redisClient(url) {
  const cluster = /^(rediss?)\+cluster:\/\/(.+)$/.exec(url);
  if (!cluster) return createRedisClient({ url });
  const [, scheme, nodes] = cluster;
  const rootNodes = nodes.split('/')[0].split('?')[0].split(',').map((node) => ({ url: `${scheme}://${node}` }));
  return createCluster({ rootNodes });
}

export class Producer {
  constructor(client) {
    this.client = client;
  }

  streamKey(tenant) {
    return `ragline:{${tenant}}:events`;
  }

  /** XADD one event as a producer does; resolves to the entry id. */
  publish(tenant, type, payload = {}) {
    return this.client.xAdd(this.streamKey(tenant), '*', {
      event_type: type,
      tenant_id: tenant,
      payload: JSON.stringify(payload),
    });
  }

  /** An order created, a tool call, the order paid: what `events` and `orderEvents` each get. */
  async publishMix(tenant) {
    const created = await this.publish(tenant, 'order_created', { order_id: 'o-1', status: 'pending' });
    const tool = await this.publish(tenant, 'tool_call', { tool: 'search' });
    const paid = await this.publish(tenant, 'order_updated', { order_id: 'o-1', status: 'paid' });
    return { all: [created, tool, paid], orders: [created, paid] };
  }

  /** The tenant's consumer groups (one per live subscription), as XINFO GROUPS shows them. */
  async groups(tenant) {
    try {
      const groups = await this.client.xInfoGroups(this.streamKey(tenant));
      return groups.map((group) => ({ name: group.name, lastDeliveredId: group['last-delivered-id'] }));
    } catch (error) {
      if (/no such key/i.test(String(error.message))) return [];
      throw error;
    }
  }

  /** Wait until the tenant has exactly `count` groups: subscriptions are live (or gone). */
  async waitForGroups(tenant, count, timeoutMs = TIMEOUT_MS) {
    return waitFor(async () => {
      const groups = await this.groups(tenant);
      return groups.length === count ? groups : undefined;
    }, timeoutMs, `${count} consumer group(s) for tenant ${tenant}`);
  }

  async close() {
    await this.client.close();
  }
}

/** Poll `probe` until it returns something other than undefined. */
export async function waitFor(probe, timeoutMs = TIMEOUT_MS, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A sink that collects what a client delivers, to await a given count of it. */
export class Inbox {
  constructor() {
    this.items = [];
    this.errors = [];
    this.completed = false;
  }

  next = (item) => {
    this.items.push(item);
  };

  error = (error) => {
    this.errors.push(error);
  };

  complete = () => {
    this.completed = true;
  };

  /** The first `count` items, once that many arrived. */
  async take(count, timeoutMs = TIMEOUT_MS) {
    await waitFor(
      () => (this.items.length >= count || this.errors.length ? true : undefined),
      timeoutMs,
      `${count} item(s), got ${this.items.length}`,
    );
    if (this.errors.length) throw this.errors[0];
    return this.items.slice(0, count);
  }

  async firstError(timeoutMs = TIMEOUT_MS) {
    await waitFor(() => (this.errors.length ? true : undefined), timeoutMs, 'an error');
    return this.errors[0];
  }
}

/** The ids and types of received `events` / `orderEvents` results, for exact comparison. */
export const idsOf = (events) => events.map((event) => event.id);
