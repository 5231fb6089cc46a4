/*
 * RAGline dashboard (gateway/static/dashboard.html): a graphql-transport-ws client of this
 * gateway's own /graphql, drawing what `statsUpdates` and `presenceChanges` send. Who is
 * listed follows presenceChanges; the `presence` query, every few seconds, refreshes how
 * many connections each has (presenceChanges says it only when a user joins).
 * The token comes from #token=<jwt> or from the form. No library, nothing from elsewhere.
 */
"use strict";

(() => {
  const PROTOCOL = "graphql-transport-ws";
  const STATS_ID = "1";
  const PRESENCE_ID = "2";
  const OPERATIONS = {
    [STATS_ID]: {
      name: "statsUpdates",
      query:
        "subscription { statsUpdates(intervalSeconds: 1) { connections subscriptions eventsDelivered" +
        " pending deadLettered redisAvailable tenants { tenantId connections subscriptions" +
        " eventsDelivered pending deadLettered } } }",
    },
    [PRESENCE_ID]: {
      name: "presenceChanges",
      query: "subscription { presenceChanges { kind userId connections at } }",
    },
  };
  const PRESENCE_QUERY_PREFIX = "presence-"; // ids of the `presence` queries
  const PRESENCE_QUERY = "{ presence { users { userId connections } } }";
  const PRESENCE_REFRESH_MS = 5000;
  const RATE_WINDOW_MS = 5000; // deliveries per second: over the last five seconds
  const CHART_SAMPLES = 60; // one a second: the last minute
  const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4408, 4429]);
  const FIRST_RETRY_MS = 1000;
  const LAST_RETRY_MS = 30000;
  const CLOSE_HINTS = {
    4400: "The gateway did not understand the page.",
    4401: "The gateway saw no valid connection_init.",
    4403: "The token was refused: connect with a fresh one.",
  };

  const element = (id) => document.getElementById(id);
  const users = new Map(); // userId -> {connections, since}
  const tenantMeters = new Map(); // tenantId -> RateMeter
  const chartValues = [];
  let totalMeter = null;
  let socket = null;
  let token = null;
  let retryMs = FIRST_RETRY_MS;
  let retryTimer = null;
  let presenceTimer = null;
  let presenceQueries = 0;

  /** Events per second from successive values of a counter and the times they arrived. */
  class RateMeter {
    constructor() {
      this.samples = [];
    }

    /** The rate over the window ending now, or null until there are two samples. */
    add(time, value) {
      const last = this.samples[this.samples.length - 1];
      if (last && value < last.value) this.samples = []; // a counter went back: start over
      this.samples.push({ time, value });
      while (this.samples.length > 2 && this.samples[1].time <= time - RATE_WINDOW_MS) {
        this.samples.shift();
      }
      const first = this.samples[0];
      if (time <= first.time) return null;
      return ((value - first.value) * 1000) / (time - first.time);
    }
  }

  // -- the connection ------------------------------------------------------------------

  function graphqlUrl() {
    const url = new URL("graphql", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function connect(newToken) {
    token = newToken;
    window.clearTimeout(retryTimer);
    window.clearInterval(presenceTimer);
    if (socket) socket.close(1000, "Reconnecting");
    resetFigures();
    const url = graphqlUrl();
    setStatus("connecting", `Connecting to ${url}…`);
    const ws = new WebSocket(url, PROTOCOL);
    socket = ws;
    ws.addEventListener("open", () => send(ws, { type: "connection_init", payload: { token } }));
    ws.addEventListener("message", (event) => onMessage(ws, event));
    ws.addEventListener("close", (event) => onClose(ws, event));
  }

  function send(ws, message) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function onMessage(ws, event) {
    if (ws !== socket) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      setStatus("error", "The gateway sent a message that is not JSON.");
      return;
    }
    switch (message.type) {
      case "connection_ack":
        retryMs = FIRST_RETRY_MS;
        element("token-form").hidden = true;
        setStatus("connected", `Connected to ${graphqlUrl()}`);
        for (const [id, operation] of Object.entries(OPERATIONS)) {
          send(ws, { id, type: "subscribe", payload: { query: operation.query } });
        }
        presenceTimer = window.setInterval(() => queryPresence(ws), PRESENCE_REFRESH_MS);
        break;
      case "ping":
        send(ws, { type: "pong" });
        break;
      case "next":
        onNext(message.id, message.payload);
        break;
      case "error":
        showErrors(message.id, message.payload);
        break;
      case "complete":
        if (!isPresenceQuery(message.id)) setStatus("error", `The gateway ended ${operationName(message.id)}.`);
        break;
      default: // pong, or a message type this page does not need
    }
  }

  function onNext(id, payload) {
    if (payload.errors && payload.errors.length) {
      showErrors(id, payload.errors);
    } else if (id === STATS_ID) {
      showStats(payload.data.statsUpdates);
    } else if (id === PRESENCE_ID) {
      showPresenceChange(payload.data.presenceChanges);
    } else if (isPresenceQuery(id)) {
      showConnectionCounts(payload.data.presence.users);
    }
  }

  function queryPresence(ws) {
    presenceQueries += 1;
    const id = `${PRESENCE_QUERY_PREFIX}${presenceQueries}`;
    send(ws, { id, type: "subscribe", payload: { query: PRESENCE_QUERY } });
  }

  const isPresenceQuery = (id) => typeof id === "string" && id.startsWith(PRESENCE_QUERY_PREFIX);

  function onClose(ws, event) {
    if (ws !== socket) return;
    socket = null;
    window.clearInterval(presenceTimer);
    const said = `${event.code}${event.reason ? ` ${event.reason}` : ""}`;
    if (RETRY_CODES.has(event.code)) {
      const seconds = retryMs / 1000;
      setStatus("closed", `Disconnected (${said}); reconnecting in ${seconds} s…`);
      retryTimer = window.setTimeout(() => connect(token), retryMs);
      retryMs = Math.min(retryMs * 2, LAST_RETRY_MS);
    } else {
      const hint = CLOSE_HINTS[event.code] || "";
      setStatus("closed", `Closed by the gateway (${said}). ${hint}`.trim());
      element("token-form").hidden = false;
    }
  }

  function operationName(id) {
    if (OPERATIONS[id]) return OPERATIONS[id].name;
    return isPresenceQuery(id) ? "presence" : `operation ${id}`;
  }

  function showErrors(id, errors) {
    const list = Array.isArray(errors) ? errors : [errors];
    const text = list
      .map((error) => {
        const code = error && error.extensions && error.extensions.code;
        return `${(error && error.message) || "error"}${code ? ` (${code})` : ""}`;
      })
      .join("; ");
    setStatus("error", `${operationName(id)}: ${text}`);
  }

  function setStatus(state, text) {
    const status = element("status");
    status.dataset.state = state;
    document.body.dataset.state = state; // figures fade while they are not live
    status.textContent = text;
  }

  // -- figures -------------------------------------------------------------------------

  function resetFigures() {
    totalMeter = new RateMeter();
    tenantMeters.clear();
    users.clear();
    renderUsers();
  }

  function setFigure(id, value, format) {
    const figure = element(id);
    figure.dataset.value = value === null ? "" : String(value);
    figure.textContent = value === null ? "–" : format(value);
  }

  const count = (value) => Number(value).toLocaleString("en-US");
  const perSecond = (value) => {
    if (value === 0) return "0";
    return value >= 10 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1);
  };

  function showStats(stats) {
    const now = performance.now();
    const rate = totalMeter.add(now, Number(stats.eventsDelivered));
    setFigure("connections", stats.connections, count);
    setFigure("subscriptions", stats.subscriptions, count);
    setFigure("deliveries-per-second", rate, perSecond);
    setFigure("pending", stats.pending, count);
    setFigure("dead-letters", Number(stats.deadLettered), count);
    setFigure("redis", stats.redisAvailable, (up) => (up ? "available" : "unavailable"));
    if (rate !== null) {
      chartValues.push(rate);
      if (chartValues.length > CHART_SAMPLES) chartValues.shift();
      drawChart();
    }
    showTenants(stats.tenants, now);
    const updated = element("updated");
    const at = new Date();
    updated.dateTime = at.toISOString();
    updated.textContent = at.toLocaleTimeString();
  }

  function showTenants(tenants, now) {
    const seen = new Set(tenants.map((tenant) => tenant.tenantId));
    for (const tenantId of tenantMeters.keys()) {
      if (!seen.has(tenantId)) tenantMeters.delete(tenantId);
    }
    const rows = tenants.map((tenant) => {
      if (!tenantMeters.has(tenant.tenantId)) tenantMeters.set(tenant.tenantId, new RateMeter());
      const rate = tenantMeters.get(tenant.tenantId).add(now, Number(tenant.eventsDelivered));
      const row = document.createElement("tr");
      row.dataset.tenant = tenant.tenantId;
      const cells = [
        tenant.tenantId,
        count(tenant.connections),
        count(tenant.subscriptions),
        rate === null ? "–" : perSecond(rate),
        count(tenant.eventsDelivered),
        count(tenant.pending),
        count(tenant.deadLettered),
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    });
    element("tenants").tBodies[0].replaceChildren(...rows);
    element("tenants-panel").hidden = tenants.length < 2;
  }

  // -- presence ------------------------------------------------------------------------

  function showPresenceChange(change) {
    if (change.kind === "LEFT") {
      users.delete(change.userId);
    } else {
      const known = users.get(change.userId);
      users.set(change.userId, { connections: change.connections, since: known ? known.since : change.at });
    }
    renderUsers();
  }

  /** Newer connection counts for the users listed (who is listed is presenceChanges' to say). */
  function showConnectionCounts(present) {
    for (const { userId, connections } of present) {
      const known = users.get(userId);
      if (known) known.connections = connections;
    }
    renderUsers();
  }

  function renderUsers() {
    const items = [...users.keys()].sort().map((userId) => {
      const { connections, since } = users.get(userId);
      const item = document.createElement("li");
      item.dataset.user = userId;
      item.dataset.connections = String(connections);
      const name = document.createElement("span");
      name.className = "user-id";
      name.textContent = userId;
      const detail = document.createElement("span");
      detail.className = "user-detail";
      const connectionCount = document.createElement("span");
      connectionCount.className = "user-connections";
      connectionCount.textContent = `${connections} connection${connections === 1 ? "" : "s"}`;
      const time = document.createElement("time");
      time.dateTime = since;
      time.textContent = new Date(since).toLocaleTimeString();
      detail.append(connectionCount, ", since ", time);
      item.append(name, detail);
      return item;
    });
    element("users").replaceChildren(...items);
    element("no-users").hidden = items.length > 0;
    element("user-count").textContent = items.length ? `(${items.length})` : "";
  }

  // -- the chart -----------------------------------------------------------------------

  /** The smallest 1, 2 or 5 times a power of ten that is at least `value`. */
  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    return [1, 2, 5, 10].map((step) => step * power).find((top) => top >= value);
  }

  function drawChart() {
    const canvas = element("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);

    const colors = getComputedStyle(document.documentElement);
    const accent = colors.getPropertyValue("--accent").trim();
    const top = niceCeiling(Math.max(1, ...chartValues));
    const pad = { left: 36, right: 8, top: 8, bottom: 8 };
    const plotWidth = width - pad.left - pad.right;
    const plotHeight = height - pad.top - pad.bottom;
    const y = (value) => pad.top + plotHeight * (1 - value / top);
    const x = (index) => pad.left + (plotWidth * (CHART_SAMPLES - chartValues.length + index)) / (CHART_SAMPLES - 1);

    context.strokeStyle = colors.getPropertyValue("--border").trim();
    context.fillStyle = colors.getPropertyValue("--muted").trim();
    context.font = "11px system-ui, sans-serif";
    context.textAlign = "right";
    context.textBaseline = "middle";
    context.lineWidth = 1;
    for (const value of [0, top / 2, top]) {
      context.beginPath();
      context.moveTo(pad.left, y(value));
      context.lineTo(width - pad.right, y(value));
      context.stroke();
      context.fillText(String(value), pad.left - 6, y(value));
    }

    if (chartValues.length > 1) {
      context.beginPath();
      chartValues.forEach((value, index) => context.lineTo(x(index), y(value)));
      context.strokeStyle = accent;
      context.lineWidth = 2;
      context.stroke();
      context.lineTo(x(chartValues.length - 1), y(0));
      context.lineTo(x(0), y(0));
      context.closePath();
      context.globalAlpha = 0.15;
      context.fillStyle = accent;
      context.fill();
      context.globalAlpha = 1;
    }
    element("chart-scale").textContent = `(last minute, up to ${top}/s)`;
  }

  // -- start ---------------------------------------------------------------------------

  element("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = element("token-input").value.trim();
    if (value) connect(value);
  });
  window.addEventListener("resize", drawChart);
  drawChart();

  const fragmentToken = new URLSearchParams(window.location.hash.slice(1)).get("token");
  if (fragmentToken) {
    connect(fragmentToken);
  } else {
    element("token-form").hidden = false;
    setStatus("idle", "Not connected: paste a token and press Connect.");
  }
})();
