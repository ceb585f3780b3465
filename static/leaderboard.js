// The leaderboard page: log in with a name, watch the live top 10, score with a button (demo).
import { rankText } from "./rank.js";
import { Scorecast } from "./scorecast.js";

const $ = (id) => document.getElementById(id);
const client = await Scorecast.connect();
let stop = null;

function userIdFor(name) {
  const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "user";
  return `${slug}-${crypto.randomUUID().slice(0, 8)}`;
}

function boardName() {
  const choice = $("board").value;
  return choice === "region" ? `region:${client.user.region || "EU"}` : choice;
}

function render(message) {
  if (message.type === "status") {
    $("status").dataset.state = message.status;
    $("status").textContent = message.status === "open" ? "live" : "reconnecting…";
    return;
  }
  if (message.type === "rank") {
    // Pushed by the gateway when the viewer's own place changed (no polling).
    if (message.board === watched) $("my-rank").textContent = rankText(message.data);
    return;
  }
  const { version, leaderboard } = message.data;
  // For scripts and tests only: a 13-digit version number means nothing to a learner.
  $("rows").dataset.version = String(version);
  const me = client.user.sub;
  $("rows").replaceChildren(
    ...leaderboard.map((entry) => {
      const row = document.createElement("tr");
      if (entry.userId === me) row.className = "me";
      for (const [value, cls] of [[entry.rank], [entry.name], [entry.score, "score"]]) {
        const cell = document.createElement("td");
        cell.textContent = value;
        if (cls) cell.className = cls;
        row.append(cell);
      }
      row.dataset.userId = entry.userId;
      return row;
    }),
  );
}

let watched = null;
function watch() {
  if (stop) stop();
  watched = boardName();
  $("my-rank").textContent = "you: …";
  stop = client.watchBoard(watched, render);
}

function showApp() {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("who").textContent = `${client.user.name} (${client.user.region || "no region"})`;
  watch();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const name = $("name").value.trim();
  try {
    // Demo only: the development login grants the `scorer` role asked for here, so the page's
    // "Score +10" button can award points. Production identity providers never give learners this
    // role: their points come from quizzes and completions (a learner's direct write gets 403).
    await client.login({ userId: userIdFor(name), name, region: $("region").value, roles: ["scorer"] });
    showApp();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("score").addEventListener("click", async () => {
  $("score-error").textContent = "";
  try {
    await client.score(10);
  } catch (err) {
    $("score-error").textContent = err.message;
  }
});

$("board").addEventListener("change", watch);
$("logout").addEventListener("click", () => {
  if (stop) stop();
  client.logout();
  location.reload();
});

if (client.user && client.user.exp * 1000 > Date.now()) showApp();
else if (client.tokens) client.refresh().then(showApp, () => $("login").classList.remove("hidden"));
else $("login").classList.remove("hidden");
