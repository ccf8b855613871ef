"""Unit tests of the `when` expression parser."""

from __future__ import annotations

import pytest

from edge_runtime import flow_expr as fx
from edge_runtime.errors import UsageError


def ev(text: str, **ok: bool) -> bool:
    return fx.evaluate(fx.parse(text), ok)


def test_single_identifier_and_negation():
    assert fx.parse("A") == ("id", "A")
    assert fx.parse("!A") == ("not", ("id", "A"))
    assert fx.parse("!!A") == ("not", ("not", ("id", "A")))
    assert fx.parse("! A") == ("not", ("id", "A"))  # a space never drops the negation


def test_precedence_not_over_and_over_or():
    assert fx.parse("A || B && C") == ("or", ("id", "A"), ("and", ("id", "B"), ("id", "C")))
    assert fx.parse("A && B || C") == ("or", ("and", ("id", "A"), ("id", "B")), ("id", "C"))
    assert fx.parse("!A && B") == ("and", ("not", ("id", "A")), ("id", "B"))
    assert fx.parse("!A || !B") == ("or", ("not", ("id", "A")), ("not", ("id", "B")))


def test_left_associative():
    assert fx.parse("A || B || C") == ("or", ("or", ("id", "A"), ("id", "B")), ("id", "C"))
    assert fx.parse("A && B && C") == ("and", ("and", ("id", "A"), ("id", "B")), ("id", "C"))


def test_parentheses_override_precedence():
    assert fx.parse("(A || B) && C") == ("and", ("or", ("id", "A"), ("id", "B")), ("id", "C"))
    assert fx.parse("!(A || B)") == ("not", ("or", ("id", "A"), ("id", "B")))
    assert fx.parse("((A))") == ("id", "A")


@pytest.mark.parametrize(
    ("text", "ok", "expected"),
    [
        ("A || B && C", {"A": False, "B": True, "C": False}, False),
        ("A || B && C", {"A": True, "B": False, "C": False}, True),
        ("(A || B) && C", {"A": True, "B": False, "C": False}, False),
        ("(B && F) || !C", {"B": True, "F": False, "C": True}, False),
        ("(B && F) || !C", {"B": False, "F": False, "C": False}, True),
        ("!download || !validate || !import", {"download": True, "validate": True, "import": True}, False),
        ("!download || !validate || !import", {"download": True, "validate": False, "import": False}, True),
    ],
)
def test_evaluate(text, ok, expected):
    assert ev(text, **ok) is expected


def test_identifiers_with_dashes_dots_underscores():
    assert fx.references(fx.parse("load-2 && _x || a.b")) == ["load-2", "_x", "a.b"]


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("", 1, "empty"),
        ("A &&", 5, "found end of expression"),
        ("(A || B", 8, "expected ')'"),
        ("A B", 3, "found 'B'"),
        ("A & B", 3, "use && and ||"),
        ("A | B", 3, "use && and ||"),
        ("A && )", 6, "found ')'"),
        ("A $ B", 3, "unexpected character"),
        ("1A", 1, "unexpected character"),
    ],
)
def test_errors_report_position(text, position, fragment):
    with pytest.raises(UsageError) as info:
        fx.parse(text)
    err = info.value
    assert err.details["position"] == position
    assert fragment in err.message
    assert f"position {position}" in err.message
    assert err.details["pointer"].endswith("^")


def test_polarity_and_to_text():
    node = fx.parse("(B && F) || !C || (A && !A)")
    assert fx.polarity(node) == {"B": "pos", "F": "pos", "C": "neg", "A": "mixed"}
    assert fx.to_text(fx.parse("(A||B)&&!C")) == "(A || B) && !C"
    assert fx.parse(fx.to_text(node)) == node
