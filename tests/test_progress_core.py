"""The I/O-free core of progress: the resume merge, sequential unlocking, streaks in a zone."""

from __future__ import annotations

import datetime as dt

from contract.courses import CourseMeta, meta_from_doc
from contract.progress import ResumePoint, merge, percentage, unlocked
from contract.streaks import current_streak, length, local_day, run_of

META = CourseMeta(
    course_id="py",
    title="Python",
    lecture_order=["intro", "vars", "loops", "funcs"],
    durations={"intro": 60.0, "vars": 120.0, "loops": 90.0, "funcs": 100.0},
    marks={"intro": 0, "vars": 5, "loops": 10, "funcs": 5},
)


def test_meta_from_a_course_document_keeps_course_order() -> None:
    doc = {
        "_id": "py",
        "title": "Python",
        "sections": [
            {"sectionId": "s1", "title": "Basics", "lectures": [
                {"lectureId": "intro", "title": "Intro", "durationSeconds": 60, "marks": 0},
                {"lectureId": "vars", "title": "Variables", "durationSeconds": 120, "marks": 5},
            ]},
            {"sectionId": "s2", "title": "Control", "lectures": [
                {"lectureId": "loops", "title": "Loops", "durationSeconds": 90, "marks": 10},
                {"lectureId": "funcs", "title": "Functions", "durationSeconds": 100, "marks": 5},
            ]},
        ],
    }  # fmt: skip
    assert meta_from_doc(doc) == META
    assert (META.lecture_count, META.total_marks) == (4, 20)
    assert META.next_lecture("vars") == "loops"
    assert META.next_lecture("funcs") is None


def test_unlocking_is_sequential() -> None:
    assert unlocked(META, set()) == ["intro"]
    assert unlocked(META, {"intro"}) == ["intro", "vars"]
    assert unlocked(META, {"intro", "loops"}) == ["intro", "vars", "funcs"]
    assert unlocked(META, set(), {"loops"}) == ["intro", "loops"]  # stored unlocks are kept


def test_percentage_rounds_to_one_decimal() -> None:
    assert percentage(1, 3) == 33.3
    assert percentage(0, 0) == 0.0


def test_merge_prefers_the_newer_resume_point_and_the_larger_watch_time() -> None:
    doc = {
        "lastWatchedLecture": "vars",
        "lastPosition": 80.0,
        "lastSeq": 10,
        "w_intro": 60.0,
        "w_vars": 80.0,
        "completedLectures": ["intro"],
        "unlockedLectures": ["vars"],
    }
    live = {"lecture": "loops", "pos": "12.5", "seq": "11", "w:vars": "70", "w:loops": "12.5", "c:vars": "1"}
    view = merge(META, doc, live)
    assert (view.last_watched_lecture, view.last_position) == ("loops", 12.5)
    assert view.watch_times == {"intro": 60.0, "vars": 80.0, "loops": 12.5}
    assert view.completed_lectures == ["intro", "vars"]
    assert view.unlocked_lectures == ["intro", "vars", "loops"]
    assert (view.completion_percentage, view.marks_obtained, view.total_marks) == (50.0, 5, 20)
    older = merge(META, doc, {"lecture": "intro", "pos": "3", "seq": "9"})
    assert (older.last_watched_lecture, older.last_position) == ("vars", 80.0)
    empty = merge(META, None, {})
    assert (empty.last_watched_lecture, empty.unlocked_lectures, empty.watch_times) == (None, ["intro"], {})


def test_the_stored_resume_point_sorts_by_seq_and_reads_older_documents() -> None:
    points = [ResumePoint(seq, "vars", pos) for seq, pos in ((9, 90.0), (10, 1.5), (2**53, 0.0), (0, 7.0))]
    assert sorted(points, key=lambda p: p.encode()) == sorted(points, key=lambda p: p.seq)
    assert [ResumePoint.decode(p.encode()) for p in points] == points
    assert [ResumePoint.decode(v) for v in (None, 7, "x", "12|a")] == [None] * 4
    legacy = {"lastWatchedLecture": "vars", "lastPosition": 80.0, "lastSeq": 10}
    newer = {**legacy, "resume": ResumePoint(11, "loops", 3.0).encode()}
    older = {**legacy, "resume": ResumePoint(9, "loops", 3.0).encode()}
    assert [ResumePoint.of_document(d) for d in (legacy, newer, older, {})] == [
        ResumePoint(10, "vars", 80.0),
        ResumePoint(11, "loops", 3.0),
        ResumePoint(10, "vars", 80.0),
        None,
    ]
    view = merge(META, newer, {"lecture": "intro", "pos": "4.0", "seq": "10"})
    assert (view.last_watched_lecture, view.last_position) == ("loops", 3.0)


def test_local_day_depends_on_the_zone() -> None:
    instant = int(dt.datetime(2026, 11, 23, 23, 30, tzinfo=dt.UTC).timestamp() * 1000)
    assert local_day(instant, "UTC") == dt.date(2026, 11, 23)
    assert local_day(instant, "Asia/Tokyo") == dt.date(2026, 11, 24)
    assert local_day(instant, "America/New_York") == dt.date(2026, 11, 23)


def test_streaks_come_from_the_set_of_active_days_in_any_order() -> None:
    d = dt.date(2026, 11, 1)
    days = {d + dt.timedelta(days=n) for n in (0, 1, 2, 4)}  # one day missed
    assert run_of(days, d + dt.timedelta(days=1)) == (d, d + dt.timedelta(days=2))
    assert length(run_of(days, d + dt.timedelta(days=4))) == 1
    assert run_of(days, d + dt.timedelta(days=3)) is None
    assert length(None) == 0
    # A late day joins its run: the set does not care which day arrived first.
    assert length(run_of(days | {d + dt.timedelta(days=3)}, d)) == 5


def test_current_streak_reads_zero_once_a_day_was_missed() -> None:
    last = dt.date(2026, 11, 20)
    days = {last - dt.timedelta(days=n) for n in range(5)}
    assert current_streak(days, last, dt.date(2026, 11, 20)) == 5
    assert current_streak(days, last, dt.date(2026, 11, 21)) == 5  # today still counts
    assert current_streak(days, last, dt.date(2026, 11, 22)) == 0
    assert current_streak(set(), None, dt.date(2026, 11, 22)) == 0
