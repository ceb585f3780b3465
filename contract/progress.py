"""Watch progress as data: the ping, its result, completion events, the resume point and the
progress view (the Redis and MongoDB side is :mod:`store.progress`)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import msgspec

from contract import keys
from contract.auth import Claims
from contract.courses import CourseMeta
from contract.events import CompletionEvent
from contract.wire import Output, json_encoder

COMPLETION_NAMESPACE = uuid.UUID("6f1c1b2e-6a8e-4f0e-9a51-3c0ad1f0e7a1")
PROGRESS = "progress"  # the MongoDB collection (see ingest.store)
MAX_INTERVALS = 100  # watched intervals kept per lecture; a disjoint one beyond is not counted


class Who(msgspec.Struct, rename="camel", omit_defaults=True):
    """Who completed a lecture, as the completion event needs it (kept in ``p:<lecture>``)."""

    tz: str = "UTC"
    name: str = ""
    region: str | None = None


_who_decoder = msgspec.json.Decoder(Who)


def who(claims: Claims) -> str:
    return json_encoder.encode(Who(tz=claims.tz, name=claims.name, region=claims.region)).decode()


# Ping and PingResult are made for every autosave ping on the gateway's hottest path: plain slotted
# dataclasses (a frozen one sets each field through object.__setattr__, three times the time).
# Nothing changes them after they are made.
@dataclasses.dataclass(slots=True)
class Ping:
    user_id: str
    course_id: str
    lecture_id: str
    position: float
    seq: int
    duration: float | None
    origin: str = ""
    # Publish a move only when the user has at least this many WebSocket connections open: 2 for a
    # ping from one of them (someone else to tell), 1 for the HTTP fallback.
    min_presence: int = 1
    # The device whose consecutive pings make coverage (default: the origin).
    device: str = ""
    # The lecture before this one in course order ('' for the first): locks it until completed.
    prev: str = ""
    who: str = "{}"  # see :func:`who`


@dataclasses.dataclass(slots=True)
class PingResult:
    moved: bool
    completed: bool
    implausible: bool = False  # an advance faster than real time: not counted
    first_watch_ms: int = 0  # when the lecture's first counted second was watched (on completion)


def progress_id(user_id: str, course_id: str) -> str:
    """The ``_id`` of a MongoDB ``progress`` document."""
    return f"{user_id}|{course_id}"


# MongoDB's flat ``<prefix>_<lectureId>`` fields and the hash's ``<prefix>:<lectureId>`` fields
# they come from (see ingest.flusher.operations).
STORED_FIELDS = ("w", "i", "f", "x")


def hydration_pairs(doc: dict[str, Any] | None) -> str:
    """The hash fields (``field\\x1fvalue`` pairs) that restore what MongoDB kept of ``doc``:
    completed lectures (as already emitted: the achievement consumer or the flusher had them)
    and each lecture's watched intervals, covered seconds, first counted time and implausible
    advances. Always at least a marker field, so the hash exists afterwards."""
    pairs = ["h", "1"]
    for field, value in (doc or {}).items():
        prefix, sep, lecture = field.partition("_")
        if sep and prefix in STORED_FIELDS and lecture:
            pairs += [f"{prefix}:{lecture}", _text(value)]
    for lecture in (doc or {}).get("completedLectures", []):
        pairs += [f"c:{lecture}", "0"]
    return "\x1f".join(pairs)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def event_id(user_id: str, course_id: str, lecture_id: str) -> str:
    """The completion's id: one per user and lecture, ever (re-emitting it is harmless)."""
    return str(uuid.uuid5(COMPLETION_NAMESPACE, f"{user_id}|{course_id}|{lecture_id}"))


def completion_event(
    claims: Claims, meta: CourseMeta, lecture_id: str, ts_ms: int, *, first_watch_ms: int = 0
) -> CompletionEvent:
    """The completion of ``lecture_id`` by the user of ``claims`` (one id per user and lecture)."""
    return CompletionEvent(
        event_id=event_id(claims.sub, meta.course_id, lecture_id),
        user_id=claims.sub,
        course_id=meta.course_id,
        lecture_id=lecture_id,
        ts_ms=ts_ms,
        tz=claims.tz,
        name=claims.name,
        region=claims.region,
        marks=meta.marks.get(lecture_id, 0),
        first_watch_ms=first_watch_ms,
    )


def pending_completions(key: str, live: dict[str, str], meta: CourseMeta | None) -> list[CompletionEvent]:
    """The completions of hash ``key`` (its fields ``live``) that never reached the completion
    stream (``p:`` left behind), rebuilt exactly as they were first sent."""
    user_id, course_id = keys.parse_progress(key)
    events = []
    for field, value in live.items():
        if not field.startswith("p:"):
            continue
        lecture = field[2:]
        try:
            person = _who_decoder.decode(value)
        except msgspec.DecodeError:
            person = Who()
        events.append(
            CompletionEvent(
                event_id=event_id(user_id, course_id, lecture),
                user_id=user_id,
                course_id=course_id,
                lecture_id=lecture,
                ts_ms=int(live.get(f"c:{lecture}") or 0),
                tz=person.tz,
                name=person.name,
                region=person.region,
                marks=meta.marks.get(lecture, 0) if meta else 0,
                first_watch_ms=int(live.get(f"f:{lecture}") or 0),
            )
        )
    return events


# ---------------------------------------------------------------- the resume view (I/O-free)
class ProgressView(Output):
    course_id: str
    last_watched_lecture: str | None
    last_position: float
    watch_times: dict[str, float]
    completed_lectures: list[str]
    completion_percentage: float
    unlocked_lectures: list[str]
    marks_obtained: int
    total_marks: int


def percentage(completed: int, total: int) -> float:
    return round(100.0 * completed / total, 1) if total else 0.0


def unlocked(meta: CourseMeta, completed: set[str], stored: set[str] | None = None) -> list[str]:
    """Sequential unlocking: the first lecture, and each lecture whose predecessor is completed."""
    order = meta.lecture_order
    opened = {order[0]} if order else set()
    opened |= {order[i + 1] for i in range(len(order) - 1) if order[i] in completed}
    opened |= stored or set()
    return [lecture for lecture in order if lecture in opened]


# The resume point in MongoDB: ONE flat string that sorts by seq (zero-padded to 20 digits, wider
# than any Seq), so the flusher's ``$max`` on an ``_id``-only upsert keeps the newest whatever the
# order of writes, re-flushes and devices. (A filter like ``{_id, lastSeq: {$lt: n}}`` on an
# upsert is what MongoDB would answer with a duplicate key, but nx-27017 applies it to ANOTHER
# document.) Equal seqs tie-break on the lecture and position text: arbitrary but the same everywhere.
RESUME_FIELD = "resume"
_SEQ_DIGITS = 20


@dataclasses.dataclass(frozen=True, slots=True)
class ResumePoint:
    seq: int
    lecture_id: str | None
    position: float

    def encode(self) -> str:
        """The sortable string stored in ``RESUME_FIELD``; needs ``0 <= seq < 10**20``."""
        return f"{self.seq:0{_SEQ_DIGITS}d}|{self.lecture_id or ''}|{self.position!r}"

    @classmethod
    def decode(cls, value: object) -> ResumePoint | None:
        """The point ``encode`` stored, or None for anything else (never raises)."""
        if not isinstance(value, str):
            return None
        seq, _, rest = value.partition("|")
        lecture, _, position = rest.rpartition("|")
        try:
            return cls(int(seq), lecture or None, float(position))
        except ValueError:
            return None

    @classmethod
    def of_document(cls, doc: dict[str, Any]) -> ResumePoint | None:
        """The newest resume point of a ``progress`` document: ``RESUME_FIELD``, or the
        ``lastWatchedLecture``/``lastPosition``/``lastSeq`` fields that older flushers wrote."""
        stored = cls.decode(doc.get(RESUME_FIELD))
        if "lastSeq" in doc:
            legacy = cls(
                int(doc["lastSeq"]), doc.get("lastWatchedLecture"), float(doc.get("lastPosition", 0.0))
            )
            if stored is None or legacy.seq > stored.seq:
                return legacy
        return stored


def merge(meta: CourseMeta, doc: dict[str, Any] | None, live: dict[str, str]) -> ProgressView:
    """MongoDB's document merged with the Redis hash; Redis wins where it is newer."""
    doc = doc or {}
    watch: dict[str, float] = {}
    for field, value in doc.items():
        if field.startswith("w_"):
            watch[field[2:]] = float(value)
    for field, value in live.items():
        if field.startswith("w:"):
            watch[field[2:]] = max(watch.get(field[2:], 0.0), float(value))
    completed = set(doc.get("completedLectures", [])) | {f[2:] for f in live if f.startswith("c:")}
    completed &= set(meta.lecture_order)
    stored = ResumePoint.of_document(doc)
    lecture, position = (stored.lecture_id, stored.position) if stored else (None, 0.0)
    if "seq" in live and (stored is None or int(live["seq"]) >= stored.seq):
        lecture, position = live["lecture"], float(live["pos"])
    return ProgressView(
        course_id=meta.course_id,
        last_watched_lecture=lecture,
        last_position=position,
        watch_times={k: watch[k] for k in meta.lecture_order if k in watch},
        completed_lectures=[k for k in meta.lecture_order if k in completed],
        completion_percentage=percentage(len(completed), meta.lecture_count),
        unlocked_lectures=unlocked(meta, completed, set(doc.get("unlockedLectures", []))),
        marks_obtained=sum(meta.marks.get(k, 0) for k in completed),
        total_marks=meta.total_marks,
    )
