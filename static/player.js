// The video player: resumes from the server's position, streams autosave pings over the
// gateway WebSocket, shows completion and unlocked lectures, follows the user's other device.
import { Scorecast } from "./scorecast.js";

const $ = (id) => document.getElementById(id);
const PING_EVERY_MS = 5000;
const SEQ_KEY = "scorecast.seq";
const courseId = new URLSearchParams(location.search).get("course") || "demo";
const client = await Scorecast.connect();
const video = $("video");
let course = null;
let lectures = [];
let state = null; // the last progress view
let current = null; // lectureId playing
let socket = null;
let timer = null;
// Where the page itself last moved the playhead (a resume, another device's move), until the
// video reports that seek done: such a seek is not the learner's, so it is not pinged. Pinging it
// would tell the other device its own move back, and two paused players would echo each other.
let ownSeekTo = null;
// Where the page last put the playhead (kept until the learner plays), and the last ping sent:
// a follower moved to the very end of a lecture gets an `ended` event it must not report either.
let placedAt = null;
let lastPinged = null;
const near = (a, b) => a !== null && b !== null && Math.abs(a - b) < 0.01;

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

// A per-device sequence that only grows, even across reloads: the server keeps the newest.
function nextSeq() {
  const seq = Math.max(Date.now(), Number(localStorage.getItem(SEQ_KEY) || 0) + 1);
  localStorage.setItem(SEQ_KEY, String(seq));
  return seq;
}

function sendPing() {
  if (!socket || !current || !Number.isFinite(video.currentTime)) return;
  const ping = { courseId, lectureId: current, position: video.currentTime, seq: nextSeq() };
  lastPinged = { lectureId: current, position: ping.position };
  if (Number.isFinite(video.duration) && video.duration > 0) ping.duration = video.duration;
  socket.progress(ping);
}

function renderLectures() {
  const done = new Set(state.completedLectures);
  const open = new Set(state.unlockedLectures);
  $("completion").textContent = state.completionPercentage;
  $("marks").textContent = `${state.marksObtained} / ${state.totalMarks}`;
  $("lectures").replaceChildren(
    ...lectures.map((lecture) => {
      const item = document.createElement("li");
      item.dataset.lectureId = lecture.lectureId;
      item.textContent = `${lecture.title} (${clock(lecture.durationSeconds)})`;
      if (done.has(lecture.lectureId)) item.classList.add("done");
      if (!open.has(lecture.lectureId)) item.classList.add("locked");
      if (lecture.lectureId === current) item.setAttribute("aria-current", "true");
      if (open.has(lecture.lectureId)) {
        item.tabIndex = 0;
        item.addEventListener("click", () => openLecture(lecture.lectureId, 0));
      }
      return item;
    }),
  );
}

async function refresh() {
  state = await client.api("GET", `/api/v1/progress/${encodeURIComponent(courseId)}`);
  renderLectures();
}

function seekWhenReady(position) {
  const seek = () => {
    ownSeekTo = Math.min(position, video.duration || position);
    placedAt = ownSeekTo;
    video.currentTime = ownSeekTo;
    video.dataset.resumedAt = String(position);
  };
  if (video.readyState >= 1) seek();
  else video.addEventListener("loadedmetadata", seek, { once: true });
}

function openLecture(lectureId, position) {
  current = lectureId;
  const lecture = lectures.find((l) => l.lectureId === lectureId);
  $("lecture-title").textContent = lecture ? lecture.title : lectureId;
  seekWhenReady(position);
  renderLectures();
}

function connectSocket() {
  socket = client.socket({
    status: ({ status }) => {
      $("status").dataset.state = status;
      $("status").textContent = status === "open" ? "live" : "reconnecting…";
    },
    ack: ({ seq }) => {
      $("saved").textContent = `saved at ${clock(video.currentTime)}`;
      $("saved").dataset.seq = String(seq);
    },
    progress: (moved) => {
      // Followed without a ping of its own (see ownSeekTo): nothing can bounce back.
      if (moved.courseId !== courseId) return;
      $("other-device").textContent = `continued on another device at ${clock(moved.position)}`;
      if (video.paused) openLecture(moved.lectureId, moved.position);
    },
    error: ({ code, message }) => ($("player-error").textContent = `${code}: ${message}`),
  });
}

// The server counts as watched only the advance between two consecutive pings of this
// connection that real time allows: ping where playback starts, so its first seconds count.
video.addEventListener("play", () => {
  placedAt = null;
  clearInterval(timer);
  sendPing();
  timer = setInterval(sendPing, PING_EVERY_MS);
});
video.addEventListener("pause", () => {
  clearInterval(timer);
  sendPing();
});
video.addEventListener("seeked", () => {
  // A seek that ended where the page put the playhead was the page's; any other is the learner's
  // (one that overtook the page's seek lands elsewhere and is pinged).
  const own = ownSeekTo !== null && Math.abs(video.currentTime - ownSeekTo) < 0.01;
  ownSeekTo = null;
  if (!own) sendPing();
});
video.addEventListener("ended", async () => {
  clearInterval(timer);
  // Playing to the end already pinged on `pause`, a seek to the end on `seeked`; a move the page
  // made (another device's) is not the learner's at all.
  const repeat = lastPinged !== null && lastPinged.lectureId === current && near(lastPinged.position, video.currentTime);
  if (!repeat && !near(placedAt, video.currentTime)) sendPing();
  setTimeout(() => refresh().catch(() => {}), 500);
});
addEventListener("pagehide", sendPing);

async function start() {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  try {
    course = await client.api("GET", `/api/v1/courses/${encodeURIComponent(courseId)}`);
  } catch (err) {
    $("player-error").textContent = `${err.message} (make run seeds the "demo" course)`;
    return;
  }
  $("course-title").textContent = course.title;
  lectures = course.sections.flatMap((section) => section.lectures);
  await refresh();
  const resumeAt = state.lastWatchedLecture ? state.lastPosition : 0;
  if (state.lastWatchedLecture) $("resume").textContent = `resumed at ${clock(resumeAt)}`;
  openLecture(state.lastWatchedLecture || lectures[0].lectureId, resumeAt);
  connectSocket();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  const userId = $("user-id").value.trim() || `${name.toLowerCase().replace(/[^a-z0-9]+/g, "-")}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await client.login({ userId, name });
    await start();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

if (client.user && client.user.exp * 1000 > Date.now()) start();
else if (client.tokens) client.refresh().then(start, () => $("login").classList.remove("hidden"));
else $("login").classList.remove("hidden");
