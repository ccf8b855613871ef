"""The table renderer shared by the three CLIs (pure functions, in-process)."""

from __future__ import annotations

from edge_runtime import table


def test_columns_fit_their_widest_cell_and_nothing_is_cut():
    job_id = "0f6c2a4e-1b7d-4c1e-9a53-7f0e8d1c2b3a"
    out = table.render(("Id", "Exit"), [(job_id, 255), ("x", None)], ascii_only=True).splitlines()
    assert out == [
        "Id" + " " * (len(job_id) - 2) + "  Exit",
        "-" * len(job_id) + "  ----",
        f"{job_id}  255",
        "x" + " " * (len(job_id) - 1) + "  -",
    ]


def test_only_capped_columns_are_shortened_with_ascii_dots():
    out = table.render(("Key", "Error"), [("k" * 80, "e" * 100)], caps={"Error": 20}, ascii_only=True)
    row = out.splitlines()[2]
    assert row == "k" * 80 + "  " + "e" * 17 + "..."


def test_non_ascii_is_escaped_off_a_terminal_and_aligned_on_one():
    plain = table.render(("Name",), [("caf\u00e9\nbar",)], ascii_only=True).splitlines()[2]
    assert plain == "caf\\xe9 bar"
    wide = table.render(("A", "B"), [("\u65e5\u672c", "x"), ("ab", "y")], ascii_only=False).splitlines()
    # "日本" takes four cells: the next column starts at the same screen column on both rows
    assert table.width(wide[2][: wide[2].index("x")]) == wide[3].index("y") == 6
    assert table.width("\u65e5\u672c") == 4


def test_fields_and_formats():
    assert table.render_fields([("Id", "j1"), ("Exit code", 0), ("Error", None)], ascii_only=True) == (
        "Id:        j1\nExit code: 0\nError:     -\n"
    )
    assert table.fmt_duration(3725) == "01:02:05" and table.fmt_duration(None) == "-"
    assert table.fmt_duration(100 * 3600 + 61) == "100h01m01s"
    assert [table.fmt_bytes(n) for n in (512, 2048, 3 * 1024**3)] == ["512 B", "2.0 KiB", "3.0 GiB"]
    assert table.cell(True, True) == "yes" and table.cell(1.5, True) == "1.5"
