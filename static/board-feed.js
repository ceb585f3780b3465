// One EventSource per board, reconnecting with exponential backoff and full jitter.
// Used by the SharedWorker (one feed per board per browser) and, where SharedWorker is
// missing, by each tab directly. Listeners get {type: "snapshot"|"update"|"rank"|"status", ...}:
// "rank" is the viewer's own place ({board, version, rank, score, gapToNext}).

export function backoffMs(attempt, baseMs = 500, capMs = 30000) {
  // "Full jitter": a random delay in [0, min(cap, base * 2^attempt)].
  return Math.floor(Math.random() * Math.min(capMs, baseMs * 2 ** attempt));
}

export class BoardFeed {
  constructor(board, emit) {
    this.board = board;
    this.emit = emit;
    this.source = null;
    this.lastEventId = null;
    this.last = null; // the newest {type, board, data} message, replayed to new listeners
    this.status = null; // the newest {type: "status", ...} message, replayed to new listeners too
    this.rank = null; // the newest {type: "rank", ...} message (the viewer's own place), replayed too
    this.attempt = 0;
    this.timer = null;
    this.stableTimer = null;
    this.closed = false;
    this.open();
  }

  url() {
    const params = new URLSearchParams({ board: this.board });
    // A manual reopen loses the browser's own Last-Event-ID header: send it as a parameter.
    if (this.lastEventId) params.set("lastEventId", this.lastEventId);
    return `/api/v1/leaderboard/stream?${params}`;
  }

  open() {
    if (this.closed) return;
    const source = new EventSource(this.url(), { withCredentials: true });
    this.source = source;
    const onFrame = (kind) => (event) => {
      this.lastEventId = event.lastEventId || this.lastEventId;
      const data = JSON.parse(event.data);
      this.last = { type: kind, board: this.board, data };
      this.emit(this.last);
    };
    source.addEventListener("snapshot", onFrame("snapshot"));
    source.addEventListener("update", onFrame("update"));
    source.addEventListener("rank", (event) => {
      // No id: a rank event never moves lastEventId (that is the board version).
      this.rank = { type: "rank", board: this.board, data: JSON.parse(event.data) };
      this.emit(this.rank);
    });
    source.addEventListener("reconnect", (event) => {
      // The gateway is draining: come back after its jittered delay, elsewhere.
      const { afterMs } = JSON.parse(event.data);
      this.retry(afterMs);
    });
    source.onopen = () => {
      this.#status({ type: "status", board: this.board, status: "open" });
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => (this.attempt = 0), 10000);
    };
    source.onerror = () => this.retry(backoffMs(this.attempt++));
  }

  retry(delayMs) {
    clearTimeout(this.stableTimer);
    if (this.source) this.source.close();
    this.source = null;
    if (this.closed) return;
    this.#status({ type: "status", board: this.board, status: "reconnecting", inMs: delayMs });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delayMs);
  }

  #status(message) {
    this.status = message;
    this.emit(message);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.stableTimer);
    if (this.source) this.source.close();
  }
}
