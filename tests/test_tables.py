from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from engine.tables import WIDEST, table


def test_a_table_has_a_header_a_rule_and_aligned_columns() -> None:
    text = table([["a", 1, None], ["bbbb", 22, "x"]], ["h1", "h2", "h3"])
    assert text == "h1    h2    h3\n----  ----  ----\na     1\nbbbb  22    x"


def test_numbers_align_right_only_where_a_column_is_all_numbers() -> None:
    text = table([["t1", 3, "a"], ["t22", 10, Decimal("1.5")]], ["id", "n", "mixed"], "numbers")
    assert text.split("\n")[2:] == ["t1      3  a", "t22    10  1.5"]


def test_right_alignment_and_an_empty_table() -> None:
    assert table([["a", "1"], ["bbbb", "22"]], ["h1", "h2"], "right") == (
        "  h1    h2\n----  ----\n   a     1\nbbbb    22"
    )
    assert table([], ["h1", "h2"]) == "h1    h2\n----  ----"


@given(st.lists(st.lists(st.text(alphabet="abc xyz", max_size=6), min_size=3, max_size=3)))
def test_every_row_starts_each_column_at_the_same_place(rows: list[list[str]]) -> None:
    lines = table(rows, ["one", "two", "three"]).split("\n")
    rule = lines[1]
    second = rule.index(" -") + 1  # where the second column's dashes start
    third = rule.index(" -", second) + 1
    for line, row in zip(lines[2:], rows, strict=True):
        assert line[:second].rstrip() == row[0].rstrip()
        assert line[second:third].rstrip() == row[1].rstrip()
        assert line[third:] == row[2].rstrip()


def test_a_cell_is_as_wide_as_it_is_shown() -> None:
    """A value with an escape sequence was measured raw and shown escaped: its rule was
    narrower than its cell."""
    lines = table([["waiting: Which\x1b[2J Python?\u202e"]], ["status"]).split("\n")
    assert lines[2] == "waiting: Which\\x1b[2J Python?\\u202e"
    assert len(lines[1]) == len(lines[2])


def test_a_huge_cell_overflows_its_column_in_its_row_alone() -> None:
    """Every row was padded to the longest cell: a model's 3 MB task title made
    `audit tasks` of 49 tasks print 153 MB of spaces."""
    huge = "t" * 1_000_000
    rows = [[f"t{i}", "x", "done"] for i in range(49)] + [["t49", huge, "done"]]
    lines = table(rows, ["id", "title", "status"]).split("\n")

    assert len("\n".join(lines)) < len(huge) + 49 * (WIDEST + 20)
    assert lines[-1] == f"t49   {huge}  done"
    assert lines[2] == "t0    " + "x".ljust(WIDEST) + "  done"  # the others as wide as allowed
