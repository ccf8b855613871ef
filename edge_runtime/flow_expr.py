"""The ``when`` expression language of ``orchesjob-flow``.

Grammar (precedence ``!`` > ``&&`` > ``||``, both binary operators left-assoc)::

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | primary
    primary := IDENT | "(" expr ")"

``A`` is true when step A SUCCEEDED; ``!A`` is true when A is terminal and did
not succeed. The engine evaluates an expression only once every referenced step
is terminal, so plain boolean negation gives exactly that meaning.

Nodes are tuples, cheap to build and to compare in tests:
``("id", name)``, ``("not", node)``, ``("and", left, right)``, ``("or", left, right)``,
``("const", bool)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import UsageError

Node = tuple[Any, ...]

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_TOKEN_RE = re.compile(r"\s*(?:(?P<op>&&|\|\||!|\(|\))|(?P<id>[A-Za-z_][A-Za-z0-9_.-]*))")


class ExprError(UsageError):
    """A ``when`` expression that does not parse; ``position`` is 0-based."""

    def __init__(self, message: str, expression: str, position: int) -> None:
        pointer = expression + "\n" + " " * position + "^"
        super().__init__(
            f"{message} at position {position + 1} in when expression {expression!r}",
            expression=expression,
            position=position + 1,
            pointer=pointer,
        )


def tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, position) triples; kind is 'op', 'id' or 'end'."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            ch = text[pos]
            hint = " (use && and ||)" if ch in "&|" else ""
            raise ExprError(f"unexpected character {ch!r}{hint}", text, pos)
        kind = "op" if m.group("op") else "id"
        value = m.group(kind)
        tokens.append((kind, value, m.start(kind)))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, tok: tuple[str, str, int], expected: str) -> ExprError:
        found = "end of expression" if tok[0] == "end" else repr(tok[1])
        return ExprError(f"expected {expected}, found {found}", self.text, tok[2])

    def parse(self) -> Node:
        node = self.expr()
        tok = self.peek()
        if tok[0] != "end":
            raise self.fail(tok, "&&, || or end of expression")
        return node

    def expr(self) -> Node:
        node = self.conj()
        while self.peek()[1] == "||" and self.peek()[0] == "op":
            self.take()
            node = ("or", node, self.conj())
        return node

    def conj(self) -> Node:
        node = self.unary()
        while self.peek()[1] == "&&" and self.peek()[0] == "op":
            self.take()
            node = ("and", node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok[0] == "op" and tok[1] == "!":
            self.take()
            return ("not", self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok[0] == "id":
            return ("id", tok[1])
        if tok[0] == "op" and tok[1] == "(":
            node = self.expr()
            close = self.take()
            if close[1] != ")" or close[0] != "op":
                raise self.fail(close, "')'")
            return node
        raise self.fail(tok, "a step id, '!' or '('")


def parse(text: str) -> Node:
    """Parse a ``when`` expression; raises ``ExprError`` with the position of the problem."""
    if not isinstance(text, str):
        raise UsageError(f"when expression must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ExprError("empty expression", text, 0)
    return _Parser(text).parse()


def references(node: Node) -> list[str]:
    """Step ids referenced by ``node``, in first-appearance order, without duplicates."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if n[0] == "id":
            if n[1] not in out:
                out.append(n[1])
        elif n[0] != "const":
            for child in n[1:]:
                walk(child)

    walk(node)
    return out


def polarity(node: Node) -> dict[str, str]:
    """For each referenced id: 'pos' (needs success), 'neg' (needs non-success) or 'mixed'.

    Used by the graph pictures to draw success and failure edges differently.
    """
    out: dict[str, str] = {}

    def walk(n: Node, negated: bool) -> None:
        if n[0] == "id":
            p = "neg" if negated else "pos"
            out[n[1]] = p if out.get(n[1], p) == p else "mixed"
        elif n[0] == "not":
            walk(n[1], not negated)
        elif n[0] in ("and", "or"):
            walk(n[1], negated)
            walk(n[2], negated)

    walk(node, False)
    return out


def evaluate(node: Node, succeeded: Mapping[str, bool]) -> bool:
    """Evaluate with ``succeeded[step_id]`` (only meaningful once all referenced steps are terminal)."""
    kind = node[0]
    if kind == "id":
        return bool(succeeded.get(node[1], False))
    if kind == "not":
        return not evaluate(node[1], succeeded)
    if kind == "and":
        return evaluate(node[1], succeeded) and evaluate(node[2], succeeded)
    if kind == "or":
        return evaluate(node[1], succeeded) or evaluate(node[2], succeeded)
    return bool(node[1])


def to_text(node: Node) -> str:
    """Canonical text with only the parentheses precedence needs."""

    def fmt(n: Node, parent: int) -> str:
        kind = n[0]
        if kind == "id":
            return n[1]
        if kind == "const":
            return "true" if n[1] else "false"
        if kind == "not":
            return "!" + fmt(n[1], 3)
        prec = 2 if kind == "and" else 1
        op = " && " if kind == "and" else " || "
        s = fmt(n[1], prec) + op + fmt(n[2], prec + 1)
        return f"({s})" if prec < parent else s

    return fmt(node, 0)
