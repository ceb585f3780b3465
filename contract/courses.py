"""Course metadata as the progress path needs it: the course order, durations, marks and which
lectures complete without video (cached by :class:`store.courses.CourseCatalog`)."""

from __future__ import annotations

from typing import Any

import msgspec

COURSES = "courses"
MISSING = "-"  # cached "no such course", so unknown ids do not reach MongoDB every time


class CourseMeta(msgspec.Struct, rename="camel"):
    course_id: str
    title: str
    lecture_order: list[str]
    durations: dict[str, float]
    marks: dict[str, int]
    completable: list[str] = []  # lectures without video, completed by an explicit call

    @property
    def lecture_count(self) -> int:
        return len(self.lecture_order)

    @property
    def total_marks(self) -> int:
        return sum(self.marks.values())

    def next_lecture(self, lecture_id: str) -> str | None:
        """The lecture after ``lecture_id`` in course order (what completing it unlocks)."""
        try:
            i = self.lecture_order.index(lecture_id)
        except ValueError:
            return None
        return self.lecture_order[i + 1] if i + 1 < len(self.lecture_order) else None

    def previous_lecture(self, lecture_id: str) -> str:
        """The lecture before ``lecture_id`` in course order, which must be completed before it
        unlocks ('' for the first lecture)."""
        try:
            i = self.lecture_order.index(lecture_id)
        except ValueError:
            return ""
        return self.lecture_order[i - 1] if i > 0 else ""


decode_meta = msgspec.json.Decoder(CourseMeta).decode


def meta_from_doc(doc: dict[str, Any]) -> CourseMeta:
    lectures = [lecture for section in doc["sections"] for lecture in section["lectures"]]
    return CourseMeta(
        course_id=doc["_id"],
        title=doc["title"],
        lecture_order=[lec["lectureId"] for lec in lectures],
        durations={lec["lectureId"]: float(lec["durationSeconds"]) for lec in lectures},
        marks={lec["lectureId"]: int(lec.get("marks", 0)) for lec in lectures},
        completable=[lec["lectureId"] for lec in lectures if lec.get("completable")],
    )
