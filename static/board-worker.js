// SharedWorker: ONE EventSource per board for the whole browser, fanned out to every tab.
// Tabs send {type: "watch"|"unwatch", board, user} and {type: "bye"} when they go away. Feeds are
// kept per user and board: the stream carries the user's own rank, never replayed to another user.
import { BoardFeed } from "./board-feed.js";

const feeds = new Map(); // `${user}\n${board}` -> {feed, ports: Set<MessagePort>}

function watch(port, board, user) {
  const key = `${user || ""}\n${board}`;
  let entry = feeds.get(key);
  if (!entry) {
    const ports = new Set();
    const feed = new BoardFeed(board, (message) => {
      for (const p of ports) p.postMessage(message);
    });
    entry = { feed, ports };
    feeds.set(key, entry);
  } else {
    // A new tab sees at once what the others see: the connection's state, the board, the rank.
    if (entry.feed.status) port.postMessage(entry.feed.status);
    if (entry.feed.last) port.postMessage(entry.feed.last);
    if (entry.feed.rank) port.postMessage(entry.feed.rank);
  }
  entry.ports.add(port);
}

function unwatch(port, key) {
  const entry = feeds.get(key);
  if (!entry) return;
  entry.ports.delete(port);
  if (entry.ports.size === 0) {
    entry.feed.close();
    feeds.delete(key);
  }
}

self.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data }) => {
    if (data.type === "watch") watch(port, data.board, data.user);
    else if (data.type === "unwatch") unwatch(port, `${data.user || ""}\n${data.board}`);
    else if (data.type === "bye") for (const key of [...feeds.keys()]) unwatch(port, key);
    else if (data.type === "stats") port.postMessage({ type: "stats", feeds: feeds.size });
  };
  port.start();
};
