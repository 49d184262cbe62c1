"""JSON as qatkit's files hold it, read strictly (the C++ reader's rules, csrc/nn/json.cpp): no
NaN / Infinity / -Infinity (Python's json extension; JSON has none, and qatkit's writers produce
none), no object with a key twice (Python's json keeps the last; a file qatkit wrote has no
duplicate, so one is corruption, and the C++ reader refuses it), no value nested in more than 64
arrays / objects (the C++ reader's bound; Python's json raised RecursionError from ~1,000), and
no string holding a lone surrogate (a \\ud800 escape without its pair: no character, and no UTF-8)."""

from __future__ import annotations

import json


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


MAX_DEPTH = 64


def _check(value) -> None:
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            for k in v:
                _utf8(k)
            stack.extend((c, depth + 1) for c in v.values())
        elif isinstance(v, list):
            stack.extend((c, depth + 1) for c in v)
        elif isinstance(v, str):
            _utf8(v)


def _utf8(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a lone surrogate \\u escape in {s!r:.60}") from None


def loads(text):
    """json.loads refusing non-finite constants, duplicate keys, nesting past MAX_DEPTH and lone
    surrogates (ValueError; json.JSONDecodeError is one)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique)
    except RecursionError:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels") from None
    _check(value)
    return value
