"""A small, safe expression language for `Step(when=...)`: no eval, no calls.

    amount > 100000 and not customer.trusted
    items[0].qty >= 2 or country in ["FR", "DE"]

Names look up the saga data; `.attr` and `[key]` look inside it. Numbers,
strings ('...' or "..."), true/false/null, lists of literals, the
comparisons == != < <= > >= in, `not in`, and/or/not and parentheses. A
missing name or key is null; an ordering between values that cannot be
ordered (a string and a number, null) is false rather than an error, so a
guard never crashes a saga.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Evaluate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>'[^'\\]*'|\"[^\"\\]*\")"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\.|,))"
)
_WORDS = {"and", "or", "not", "in", "true", "false", "null"}
_MISSING = None


class ExpressionError(ValueError):
    """The expression does not parse; the message says where."""


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"cannot read {text[pos:].strip()[:20]!r} at column {pos + 1}")
        pos = match.end()
        if match.group("num") is not None:
            raw = match.group("num")
            out.append(("lit", float(raw) if any(c in raw for c in ".eE") else int(raw)))
        elif match.group("str") is not None:
            out.append(("lit", match.group("str")[1:-1]))
        elif match.group("name") is not None:
            word = match.group("name")
            if word in ("true", "false", "null"):
                out.append(("lit", {"true": True, "false": False, "null": None}[word]))
            elif word in _WORDS:
                out.append(("kw", word))
            else:
                out.append(("name", word))
        else:
            out.append(("op", match.group("op")))
    return out


def _lookup(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(key, _MISSING)
    if isinstance(value, list) and isinstance(key, int) and not isinstance(key, bool):
        return value[key] if -len(value) <= key < len(value) else _MISSING
    return _MISSING


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op in ("in", "not in"):
        try:
            found = left in right
        except TypeError:
            found = False
        return found if op == "in" else not found
    try:
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:
        return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: Any = None) -> bool:
        token = self.peek()
        if token is not None and token[0] == kind and (value is None or token[1] == value):
            self.pos += 1
            return True
        return False

    def expect(self, kind: str, value: str) -> None:
        if not self.take(kind, value):
            token = self.peek()
            raise ExpressionError(f"expected {value!r}, found {'the end' if token is None else repr(token[1])}")

    def parse(self) -> Callable[[Mapping[str, Any]], Any]:
        if not self.tokens:
            raise ExpressionError("the expression is empty")
        node = self.or_()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def or_(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.and_()
        while self.take("kw", "or"):
            right = self.and_()
            left = (lambda a, b: lambda d: bool(a(d)) or bool(b(d)))(left, right)
        return left

    def and_(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.not_()
        while self.take("kw", "and"):
            right = self.not_()
            left = (lambda a, b: lambda d: bool(a(d)) and bool(b(d)))(left, right)
        return left

    def not_(self) -> Callable[[Mapping[str, Any]], Any]:
        if self.take("kw", "not"):
            inner = self.not_()
            return lambda d: not inner(d)
        return self.comparison()

    def comparison(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.operand()
        token = self.peek()
        op = None
        if token is not None and token[0] == "op" and token[1] in ("==", "!=", "<", "<=", ">", ">="):
            op = token[1]
            self.pos += 1
        elif self.take("kw", "in"):
            op = "in"
        elif token == ("kw", "not") and self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1] == ("kw", "in"):
            self.pos += 2
            op = "not in"
        if op is None:
            return left
        right = self.operand()
        return lambda d: _compare(op, left(d), right(d))

    def operand(self) -> Callable[[Mapping[str, Any]], Any]:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too soon")
        kind, value = token
        if kind == "lit":
            self.pos += 1
            return lambda d: value
        if self.take("op", "("):
            inner = self.or_()
            self.expect("op", ")")
            return inner
        if self.take("op", "["):
            items: list[Any] = []
            while not self.take("op", "]"):
                if items and not self.take("op", ","):
                    raise ExpressionError("a list's items are separated by commas")
                literal = self.peek()
                if literal is None or literal[0] != "lit":
                    raise ExpressionError("a list holds literals only")
                self.pos += 1
                items.append(literal[1])
            return lambda d: items
        if kind == "name":
            self.pos += 1
            path: list[Any] = [value]
            while True:
                if self.take("op", "."):
                    attr = self.peek()
                    if attr is None or attr[0] != "name":
                        raise ExpressionError("a name must follow '.'")
                    self.pos += 1
                    path.append(attr[1])
                elif self.take("op", "["):
                    key = self.peek()
                    if key is None or key[0] != "lit" or not isinstance(key[1], (str, int)):
                        raise ExpressionError("a key in [...] is a string or an integer")
                    self.pos += 1
                    path.append(key[1])
                    self.expect("op", "]")
                else:
                    break

            def get(data: Mapping[str, Any], path: list[Any] = path) -> Any:
                value: Any = data
                for key in path:
                    value = _lookup(value, key)
                return value

            return get
        raise ExpressionError(f"unexpected {value!r}")


def compile_expression(text: str) -> Evaluate:
    """The expression as a function of the saga data; ExpressionError if it does not parse."""
    node = _Parser(text).parse()
    return lambda data: bool(node(data))
