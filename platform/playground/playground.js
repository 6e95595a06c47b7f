// The Rally playground: one player per tab, speaking the public player API
// (docs/player-protocol.md) as any game client does. docs/playground.md describes the page and
// the contract of a game's view (web/view.js in its bundle).

const $ = (id) => document.getElementById(id);
const PLAYERS_KEY = "rally.playground.players";
const HISTORY_KEY = "rally.playground.history";
const HISTORY_KEPT = 50;
// Close codes after which the client is still there and the page opens the socket again.
const RECONNECT_CODES = new Set([1009, 1012, 1013, 4002]);
// The close code that names another node to connect to (docs/nodes.md).
const CLOSE_MOVED = 4010;

const page = {
  developer: null,   // a developer's access token, on `rally server`
  stage: null,       // "tenant/project/stage"
  player: null,      // {user_id, secret}
  accessToken: null, // the player's
  client: null,      // {client_id, socket_path, base}
  socket: null,
  listeners: new Set(),
  view: null,        // the game's view module
  history: loadJson(HISTORY_KEY, []),
  historyAt: -1,
  reconnects: 0,
};

function loadJson(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// --- the HTTP API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code ?? "http_" + status;
    this.details = body?.error?.details;
  }
}

async function api(method, path, { body, token, base = "" } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (token) headers.authorization = "Bearer " + token;
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function stagePath(stage) {
  const [tenant, project, name] = stage.split("/").map(encodeURIComponent);
  return `/api/v1/tenants/${tenant}/projects/${project}/stages/${name}`;
}

// --- the event log ----------------------------------------------------------------------------

function log(kind, type, detail) {
  const item = document.createElement("li");
  item.className = kind;
  item.dataset.type = type;
  if (typeof detail === "object" && typeof detail?.code === "string") item.dataset.code = detail.code;
  const time = document.createElement("time");
  time.textContent = new Date().toISOString().slice(11, 23);
  const label = document.createElement("span");
  label.className = "type";
  label.textContent = (kind === "out" ? "→ " : kind === "in" ? "← " : "") + type +
    (item.dataset.code ? " " + item.dataset.code : "");
  item.append(time, label);
  if (detail !== undefined) {
    item.append(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  const events = $("events");
  const atBottom = events.scrollTop + events.clientHeight >= events.scrollHeight - 4;
  events.append(item);
  if (atBottom) events.scrollTop = events.scrollHeight;
}

function note(text) {
  log("note", "note", text);
}

function failed(what, error) {
  log("error", error.code ?? "error", `${what}: ${error.message}`);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
  const open = state === "open";
  $("send").disabled = !open;
  $("matchmake").disabled = !open;
  $("disconnect").disabled = !open;
  $("leave").disabled = !open;
  $("resume").disabled = open || !page.client;
}

// --- players ----------------------------------------------------------------------------------

function savedPlayers() {
  return loadJson(PLAYERS_KEY, []);
}

function showPlayers(selected) {
  const select = $("players");
  select.replaceChildren();
  for (const player of savedPlayers()) {
    const option = document.createElement("option");
    option.value = player.user_id;
    option.textContent = `${player.user_id.slice(-8)} (since ${player.created.slice(0, 10)})`;
    select.append(option);
  }
  if (selected) select.value = selected;
  page.player = savedPlayers().find((player) => player.user_id === select.value) ?? null;
}

async function newPlayer() {
  try {
    const made = await api("POST", "/api/v1/users");
    const players = savedPlayers();
    players.push({ user_id: made.user_id, secret: made.secret, created: new Date().toISOString() });
    localStorage.setItem(PLAYERS_KEY, JSON.stringify(players));
    showPlayers(made.user_id);
    note(`new player ${made.user_id}, kept in this browser`);
  } catch (error) {
    failed("signing up", error);
  }
}

function forgetPlayer() {
  if (!page.player) return;
  const players = savedPlayers().filter((player) => player.user_id !== page.player.user_id);
  localStorage.setItem(PLAYERS_KEY, JSON.stringify(players));
  showPlayers();
}

async function signInPlayer() {
  if (!page.player) throw new Error("choose a player, or make a new one");
  const tokens = await api("POST", "/api/v1/users/sign-in", {
    body: { user_id: page.player.user_id, secret: page.player.secret },
  });
  page.accessToken = tokens.access_token;
}

// --- the client and its socket ----------------------------------------------------------------

async function newClient() {
  try {
    closeSocket();
    await signInPlayer();
    const created = await api("POST", stagePath(page.stage) + "/clients", {
      body: {},
      token: page.accessToken,
    });
    page.client = {
      client_id: created.client_id,
      socket_path: created.socket_path,
      base: created.node_url ?? location.origin,
    };
    log("in", "client created", created);
    openSocket();
  } catch (error) {
    failed("creating a client", error);
  }
}

async function resume() {
  if (!page.client) return;
  try {
    await signInPlayer(); // a fresh access token: the old one may have expired meanwhile
    openSocket();
  } catch (error) {
    failed("resuming", error);
  }
}

function openSocket() {
  const url = page.client.base.replace(/^http/, "ws") + page.client.socket_path;
  const socket = new WebSocket(url, ["rally.player.v1", "rally.token." + page.accessToken]);
  socket.binaryType = "arraybuffer";
  page.socket = socket;
  setStatus("connecting", "connecting…");
  socket.onopen = () => {
    if (page.socket !== socket) return;
    setStatus("open", "connected");
    tell({ type: "connection", state: "open" });
  };
  socket.onmessage = (frame) => {
    if (page.socket !== socket) return;
    if (typeof frame.data === "string") {
      let event;
      try {
        event = JSON.parse(frame.data);
      } catch {
        log("error", "unreadable", frame.data);
        return;
      }
      received(event);
    } else {
      const bytes = new Uint8Array(frame.data);
      log("in", "binary", `${bytes.length} bytes: ${hex(bytes)}`);
      tell({ type: "binary", bytes });
    }
  };
  socket.onclose = (close) => {
    if (page.socket !== socket) return;
    page.socket = null;
    log(close.code === 1000 || close.code === 1005 ? "note" : "error", `closed ${close.code}`, close.reason);
    setStatus("closed", `closed (${close.code})`);
    tell({ type: "connection", state: "closed", code: close.code, reason: close.reason });
    if (close.code === CLOSE_MOVED && /^https?:\/\//.test(close.reason)) {
      page.client.base = close.reason;
      note(`the client is served by ${close.reason}: connecting there`);
      openSocket();
    } else if (RECONNECT_CODES.has(close.code) && page.reconnects < 5) {
      page.reconnects += 1;
      setTimeout(resume, 500 * page.reconnects);
    }
  };
}

function closeSocket() {
  const socket = page.socket;
  page.socket = null;
  if (socket) socket.close(1000, "playground");
}

function received(event) {
  const kind = event.type === "error" || event.type === "matchmaking_failed" ? "error" : "in";
  // A message is shown as its text: the game's own payload, unescaped.
  log(kind, event.type, event.type === "message" && typeof event.text === "string" ? event.text : event);
  if (event.type === "greeted") {
    page.reconnects = 0;
    if (event.runtime) showAssignment(event.runtime);
  } else if (event.type === "runtime_assigned") {
    showAssignment(event);
  } else if (event.type === "client_deleted") {
    page.client = null;
  }
  tell(event);
}

function showAssignment(runtime) {
  const where = runtime.qualifier === "match" ? `match ${runtime.mode}, group ${runtime.group}` : "lobby";
  $("assignment").textContent = `in a ${where} · version ${runtime.version} · runtime ${runtime.runtime_id.slice(-8)}`;
}

function sendFrame(frame, shown) {
  if (!page.socket || page.socket.readyState !== WebSocket.OPEN) {
    note("not connected");
    return false;
  }
  page.socket.send(frame);
  log("out", shown.type, shown.detail);
  return true;
}

function sendText(text) {
  return sendFrame(JSON.stringify({ type: "message", text }), { type: "message", detail: text });
}

function hex(bytes) {
  return Array.from(bytes.slice(0, 64), (byte) => byte.toString(16).padStart(2, "0")).join(" ") +
    (bytes.length > 64 ? " …" : "");
}

function parseHex(text) {
  const digits = text.replace(/\s+/g, "");
  if (digits.length % 2 !== 0 || /[^0-9a-f]/i.test(digits)) {
    throw new Error("binary messages are written in hex, two digits a byte (e.g. 01 ff 2a)");
  }
  return new Uint8Array(digits.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

// --- the composer -----------------------------------------------------------------------------

function send(event) {
  event.preventDefault();
  const kind = $("kind").value;
  const value = $("message").value;
  let sent = false;
  try {
    if (kind === "text") {
      sent = sendText(value);
    } else if (kind === "json") {
      sent = sendText(JSON.stringify(JSON.parse(value)));
    } else if (kind === "binary") {
      sent = sendFrame(parseHex(value), { type: "binary", detail: value });
    } else {
      sent = sendFrame(value, { type: "frame", detail: value });
    }
  } catch (error) {
    note(error.message);
    return;
  }
  if (!sent) return;
  remember(kind, value);
  $("message").value = "";
}

function remember(kind, value) {
  const history = page.history.filter((entry) => entry.kind !== kind || entry.value !== value);
  history.unshift({ kind, value });
  page.history = history.slice(0, HISTORY_KEPT);
  page.historyAt = -1;
  localStorage.setItem(HISTORY_KEY, JSON.stringify(page.history));
  showHistory();
}

function showHistory() {
  const select = $("history");
  select.replaceChildren(new Option("history…", ""));
  page.history.forEach((entry, index) => {
    select.append(new Option(`[${entry.kind}] ${entry.value.slice(0, 60)}`, String(index)));
  });
}

function recall(index) {
  const entry = page.history[index];
  if (!entry) return;
  page.historyAt = index;
  $("kind").value = entry.kind;
  $("message").value = entry.value;
}

function composerKeys(event) {
  const box = $("message");
  if (event.key === "Enter" && !event.shiftKey) {
    $("composer").requestSubmit();
  } else if (event.key === "ArrowUp" && !box.value.includes("\n")) {
    recall(Math.min(page.historyAt + 1, page.history.length - 1));
  } else if (event.key === "ArrowDown" && !box.value.includes("\n")) {
    if (page.historyAt <= 0) {
      page.historyAt = -1;
      box.value = "";
    } else {
      recall(page.historyAt - 1);
    }
  } else {
    return;
  }
  event.preventDefault();
}

function requestMatch(event) {
  event.preventDefault();
  const mode = $("mode").value.trim();
  // A lobby decides how its players ask for a match; a view says so in `requests`, and
  // without one the mode's name is sent as the message.
  const request = page.view?.requests?.[mode] ?? mode;
  if (sendText(request)) note(`asked the lobby for a match of mode ${mode}`);
}

// --- the game's view --------------------------------------------------------------------------

function tell(event) {
  for (const listener of page.listeners) {
    try {
      listener(event);
    } catch (error) {
      console.error("the game view failed on an event", error);
    }
  }
}

// What a view gets: the player's side of the socket.
const game = {
  send(message) {
    return sendText(typeof message === "string" ? message : JSON.stringify(message));
  },
  sendBinary(bytes) {
    return sendFrame(bytes, { type: "binary", detail: hex(bytes) });
  },
  on(listener) {
    page.listeners.add(listener);
    return () => page.listeners.delete(listener);
  },
  get userId() {
    return page.player?.user_id ?? null;
  },
};

async function loadView() {
  page.view = null;
  page.listeners.clear();
  const response = await fetch(`/play/stages/${page.stage.split("/").map(encodeURIComponent).join("/")}/view.js`, {
    headers: page.developer ? { authorization: "Bearer " + page.developer } : {},
    cache: "no-store",
  });
  if (response.status === 404) {
    note("this game has no web/view.js: the console alone");
    return;
  }
  if (!response.ok) {
    note(`the game view could not be loaded (HTTP ${response.status})`);
    return;
  }
  const url = URL.createObjectURL(new Blob([await response.text()], { type: "text/javascript" }));
  try {
    const view = await import(url);
    const root = $("view");
    root.replaceChildren();
    view.mount(root, game);
    page.view = view;
    const modes = $("modes");
    modes.replaceChildren(...Object.keys(view.requests ?? {}).map((mode) => new Option(mode, mode)));
    if (!$("mode").value && modes.options.length) $("mode").value = modes.options[0].value;
    note("game view loaded from the deployed bundle");
  } catch (error) {
    note(`the game view failed to start: ${error}`);
  } finally {
    URL.revokeObjectURL(url);
  }
}

// --- start ------------------------------------------------------------------------------------

async function openStage(stage) {
  page.stage = stage;
  $("stage").value = stage;
  $("stage-label").textContent = stage;
  history.replaceState(null, "", "#" + stage);
  $("main").hidden = false;
  await loadView();
}

async function listStages() {
  // Every stage this developer can see, for the stage field's suggestions.
  const token = page.developer;
  const stages = [];
  const tenants = (await api("GET", "/api/v1/tenants", { token })).tenants;
  for (const tenant of tenants) {
    const projects = (await api("GET", `/api/v1/tenants/${tenant.id}/projects`, { token })).projects;
    for (const project of projects) {
      const listed = (await api("GET", `/api/v1/tenants/${tenant.id}/projects/${project.id}/stages`, { token })).stages;
      for (const stage of listed) {
        stages.push([tenant.alias ?? tenant.id, project.alias ?? project.id, stage.alias ?? stage.id].join("/"));
      }
    }
  }
  $("stages").replaceChildren(...stages.map((stage) => new Option(stage, stage)));
  return stages;
}

async function signInDeveloper(event) {
  event.preventDefault();
  try {
    const tokens = await api("POST", "/api/v1/auth/login", {
      body: { username: $("username").value, password: $("password").value },
    });
    page.developer = tokens.access_token;
    $("password").value = "";
    $("sign-in").hidden = true;
    $("setup").hidden = false;
    const stages = await listStages();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) await openStage(wanted);
    else if (stages.length === 1) await openStage(stages[0]);
  } catch (error) {
    alert(`Sign-in failed: ${error.message}`);
  }
}

async function start() {
  showPlayers();
  showHistory();
  setStatus("idle", "not connected");
  $("sign-in-form").addEventListener("submit", signInDeveloper);
  $("stage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openStage($("stage").value.trim());
  });
  $("players").addEventListener("change", () => showPlayers($("players").value));
  $("new-player").addEventListener("click", newPlayer);
  $("forget-player").addEventListener("click", forgetPlayer);
  $("connect").addEventListener("click", newClient);
  $("disconnect").addEventListener("click", () => {
    closeSocket();
    note("disconnected: the client waits for the reconnect grace period; Resume reconnects");
    setStatus("closed", "disconnected");
  });
  $("resume").addEventListener("click", resume);
  $("leave").addEventListener("click", () => sendFrame(JSON.stringify({ type: "leave" }), { type: "leave" }));
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", composerKeys);
  $("history").addEventListener("change", () => recall(Number($("history").value)));
  $("matchmaking").addEventListener("submit", requestMatch);
  $("clear").addEventListener("click", () => $("events").replaceChildren());

  const config = await api("GET", "/play/config.json");
  if (config.stage) {
    // `rally dev`: its own game, no sign-in.
    $("setup").hidden = false;
    $("stage-form").hidden = true;
    await openStage(config.stage);
  } else {
    $("sign-in").hidden = false;
  }
}

start().catch((error) => note(`the playground failed to start: ${error.message}`));
