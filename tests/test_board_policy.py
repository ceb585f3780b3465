"""Which board names a client may follow (the I/O-free half of the gateway's board policy)."""

from __future__ import annotations

import datetime as dt

import pytest

from contract.boards import course_of, followable, regions_of
from contract.errors import BoardNameError, UnknownBoard

NOW = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.UTC)  # ISO week 2026-W48, month 2026-11
REGIONS = regions_of("EU, na,APAC,LATAM,")


def follow(name: str) -> str:
    return followable(name, regions=REGIONS, weeks_back=12, months_back=12, now=NOW)


@pytest.mark.parametrize(
    ("name", "board"),
    [
        ("global", "global"),
        ("weekly", "weekly:2026-W48"),
        ("monthly", "monthly:2026-11"),
        ("weekly:2026-W48", "weekly:2026-W48"),
        ("weekly:2026-W36", "weekly:2026-W36"),  # 12 weeks back
        ("monthly:2025-11", "monthly:2025-11"),  # 12 months back
        ("region:eu", "region:EU"),
        ("region:NA", "region:NA"),
        ("course:py-101", "course:py-101"),
    ],
)
def test_boards_that_exist_can_be_followed(name: str, board: str) -> None:
    assert follow(name) == board


@pytest.mark.parametrize(
    "name",
    [
        "weekly:0001-W01",
        "weekly:2026-W35",  # 13 weeks back
        "weekly:2026-W49",  # next week
        "monthly:0001-01",
        "monthly:2025-10",  # 13 months back
        "monthly:2026-12",  # next month
        "region:XX",
        "region:MARS",
    ],
)
def test_well_formed_names_of_no_followable_board_are_unknown(name: str) -> None:
    with pytest.raises(UnknownBoard) as refused:
        follow(name)
    assert (refused.value.code, refused.value.status) == ("unknown_board", 404)


@pytest.mark.parametrize(
    "name", ["galaxy", "weekly:2026-W54", "monthly:2026-13", "course:", "course:a b", ""]
)
def test_malformed_names_are_invalid(name: str) -> None:
    with pytest.raises(BoardNameError) as refused:
        follow(name)
    assert (refused.value.code, refused.value.status) == ("invalid_board", 400)


def test_the_windows_and_regions_are_settings() -> None:
    assert REGIONS == {"EU", "NA", "APAC", "LATAM"}
    assert followable("weekly:2026-W47", regions=REGIONS, weeks_back=1, months_back=0, now=NOW)
    with pytest.raises(UnknownBoard):
        followable("weekly:2026-W46", regions=REGIONS, weeks_back=1, months_back=0, now=NOW)
    with pytest.raises(UnknownBoard):
        followable("monthly:2026-10", regions=REGIONS, weeks_back=1, months_back=0, now=NOW)
    assert followable("region:MARS", regions={"MARS"}, weeks_back=0, months_back=0, now=NOW) == "region:MARS"
    assert course_of("course:py") == "py"
    assert course_of("region:EU") is None


def test_the_windows_reach_across_the_year() -> None:
    january = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # ISO week 2026-W02
    for name in ("weekly:2025-W50", "monthly:2025-01"):
        assert followable(name, regions=REGIONS, weeks_back=12, months_back=12, now=january) == name
    assert followable("weekly:2025-W42", regions=REGIONS, weeks_back=12, months_back=12, now=january)
    for name in ("weekly:2025-W41", "monthly:2024-12"):
        with pytest.raises(UnknownBoard):
            followable(name, regions=REGIONS, weeks_back=12, months_back=12, now=january)
