// The Scorecast browser client, shared by the leaderboard page and the video player.
// No build step and no dependencies: an ES module served by the gateway.
import { BoardFeed, backoffMs } from "./board-feed.js";

export { backoffMs };

const TOKENS = "scorecast.tokens";
const COOKIE = "scorecast_token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function claimsOf(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
}

export class Scorecast {
  constructor(ingestUrl) {
    this.ingestUrl = ingestUrl.replace(/\/$/, "");
    this.tokens = JSON.parse(localStorage.getItem(TOKENS) || "null");
    this.refreshTimer = null;
    if (this.tokens) this.#scheduleRefresh();
  }

  /** Reads where the ingest API is from the gateway that served the page. */
  static async connect() {
    const config = await (await fetch("/api/v1/config")).json();
    return new Scorecast(config.ingestUrl);
  }

  get user() {
    return this.tokens ? claimsOf(this.tokens.accessToken) : null;
  }

  get accessToken() {
    return this.tokens ? this.tokens.accessToken : null;
  }

  async login({ userId, name, region, roles }) {
    const body = { userId, name, timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" };
    if (region) body.region = region;
    if (roles) body.roles = roles;
    this.#store(await this.#request("POST", "/api/v1/auth/login", body, false));
    return this.user;
  }

  logout() {
    this.tokens = null;
    localStorage.removeItem(TOKENS);
    document.cookie = `${COOKIE}=; path=/; max-age=0; samesite=strict`;
    clearTimeout(this.refreshTimer);
  }

  async refresh() {
    if (!this.tokens) return;
    try {
      const pair = await this.#request("POST", "/api/v1/auth/refresh", { refreshToken: this.tokens.refreshToken }, false);
      this.#store(pair);
    } catch (err) {
      // Another tab may have used the refresh token first: take what it stored.
      const stored = JSON.parse(localStorage.getItem(TOKENS) || "null");
      if (stored && stored.refreshToken !== this.tokens.refreshToken) this.#store(stored);
      else throw err;
    }
  }

  #store(pair) {
    this.tokens = pair;
    localStorage.setItem(TOKENS, JSON.stringify(pair));
    // The cookie lets EventSource (which cannot set headers) authenticate to the gateway.
    document.cookie = `${COOKIE}=${pair.accessToken}; path=/; max-age=${pair.expiresIn}; samesite=strict`;
    this.#scheduleRefresh();
  }

  #scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    const { exp } = claimsOf(this.tokens.accessToken);
    const inMs = Math.max(1000, exp * 1000 - Date.now() - 60000 - Math.random() * 10000);
    this.refreshTimer = setTimeout(() => this.refresh().catch(() => {}), inMs);
  }

  async #request(method, path, body, auth = true) {
    const headers = { "content-type": "application/json" };
    if (auth && this.tokens) headers.authorization = `Bearer ${this.tokens.accessToken}`;
    const response = await fetch(this.ingestUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = (data && data.error) || { code: "http_error", message: response.statusText };
      throw new ApiError(response.status, error.code, error.message);
    }
    return data;
  }

  api(method, path, body) {
    return this.#request(method, path, body);
  }

  /**
   * Award points to `userId` (default: the logged-in user). Needs a token with role `scorer` or
   * `admin`: in production only backend services hold one; a learner's own token gets 403.
   */
  score(increment, { userId = this.user.sub, courseId } = {}) {
    const body = { userId, scoreIncrement: increment, actionId: crypto.randomUUID() };
    if (courseId) body.courseId = courseId;
    return this.api("POST", "/api/v1/scores/update", body);
  }

  /**
   * Follow a board live. ONE SSE connection per browser through a SharedWorker, shared by all
   * tabs; a per-tab EventSource where SharedWorker is missing. Returns a function that stops.
   */
  watchBoard(board, onMessage) {
    if (typeof SharedWorker !== "undefined") {
      const worker = new SharedWorker("/board-worker.js", { type: "module", name: "scorecast-boards" });
      worker.port.onmessage = ({ data }) => onMessage(data);
      worker.port.start();
      const user = this.user ? this.user.sub : "";
      worker.port.postMessage({ type: "watch", board, user });
      const bye = () => worker.port.postMessage({ type: "bye" });
      addEventListener("pagehide", bye);
      return () => {
        worker.port.postMessage({ type: "unwatch", board, user });
        removeEventListener("pagehide", bye);
      };
    }
    const feed = new BoardFeed(board, onMessage);
    return () => feed.close();
  }

  socket(handlers) {
    return new SocketClient(() => this.accessToken, handlers);
  }
}

/**
 * The gateway WebSocket: reconnects with backoff and jitter, honours {type: "reconnect"},
 * keeps progress pings until acked and resends them after a reconnect, keeps subscriptions.
 */
export class SocketClient {
  constructor(token, handlers = {}) {
    this.token = token;
    this.handlers = handlers;
    this.unacked = new Map(); // seq -> ping
    this.boards = new Set();
    this.attempt = 0;
    this.ws = null;
    this.closed = false;
    this.keepalive = null;
    this.#open();
  }

  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  #open() {
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/api/v1/ws?access_token=${encodeURIComponent(this.token())}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    let stable = null;
    let after = null;
    ws.onopen = () => {
      stable = setTimeout(() => (this.attempt = 0), 10000);
      for (const board of this.boards) this.#send({ type: "subscribe", board });
      for (const ping of this.unacked.values()) this.#send(ping);
      this.keepalive = setInterval(() => this.#send({ type: "ping" }), 25000);
      this.#emit("status", { status: "open" });
    };
    ws.onmessage = ({ data }) => {
      const message = JSON.parse(data);
      if (message.type === "ack") this.unacked.delete(message.seq);
      // A refused ping is answered with its seq: resending it would be refused again, forever.
      // Only an outage (`unavailable`) keeps it, to be resent after the next reconnect.
      if (message.type === "error" && message.seq !== undefined && message.code !== "unavailable") {
        this.unacked.delete(message.seq);
      }
      if (message.type === "reconnect") after = message.afterMs;
      this.#emit(message.type, message);
    };
    ws.onclose = (event) => {
      clearTimeout(stable);
      clearInterval(this.keepalive);
      this.ws = null;
      if (this.closed) return;
      const delay = after ?? backoffMs(this.attempt++);
      this.#emit("status", { status: "reconnecting", inMs: delay, code: event.code, reason: event.reason });
      setTimeout(() => this.#open(), delay);
    };
  }

  #emit(type, message) {
    const handler = this.handlers[type];
    if (handler) handler(message);
  }

  #send(message) {
    if (this.connected) this.ws.send(JSON.stringify(message));
  }

  subscribe(board) {
    this.boards.add(board);
    this.#send({ type: "subscribe", board });
  }

  unsubscribe(board) {
    this.boards.delete(board);
    this.#send({ type: "unsubscribe", board });
  }

  /** Send an autosave ping; it is kept and resent after reconnects until the gateway acks it. */
  progress(ping) {
    const message = { type: "progress", ...ping };
    this.unacked.set(ping.seq, message);
    // Keep the newest few: an old unacked position is superseded by a newer one anyway.
    if (this.unacked.size > 20) this.unacked.delete(this.unacked.keys().next().value);
    this.#send(message);
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
  }
}
