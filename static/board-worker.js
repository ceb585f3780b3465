// SharedWorker: ONE EventSource per board for the whole browser, fanned out to every tab.
// Tabs send {type: "watch"|"unwatch", board} and {type: "bye"} when they go away.
import { BoardFeed } from "./board-feed.js";

const feeds = new Map(); // board -> {feed, ports: Set<MessagePort>}

function watch(port, board) {
  let entry = feeds.get(board);
  if (!entry) {
    const ports = new Set();
    const feed = new BoardFeed(board, (message) => {
      for (const p of ports) p.postMessage(message);
    });
    entry = { feed, ports };
    feeds.set(board, entry);
  } else {
    // A new tab sees at once what the others see: the connection's state and the board.
    if (entry.feed.status) port.postMessage(entry.feed.status);
    if (entry.feed.last) port.postMessage(entry.feed.last);
  }
  entry.ports.add(port);
}

function unwatch(port, board) {
  const entry = feeds.get(board);
  if (!entry) return;
  entry.ports.delete(port);
  if (entry.ports.size === 0) {
    entry.feed.close();
    feeds.delete(board);
  }
}

self.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data }) => {
    if (data.type === "watch") watch(port, data.board);
    else if (data.type === "unwatch") unwatch(port, data.board);
    else if (data.type === "bye") for (const board of [...feeds.keys()]) unwatch(port, board);
    else if (data.type === "stats") port.postMessage({ type: "stats", feeds: feeds.size });
  };
  port.start();
};
