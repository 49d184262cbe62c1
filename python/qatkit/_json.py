"""JSON as qatkit's files hold it, read strictly (the C++ reader's rules, csrc/nn/json.cpp): no
NaN / Infinity / -Infinity (Python's json extension; JSON has none, and qatkit's writers produce
none) and no object with a key twice (Python's json keeps the last; a file qatkit wrote has no
duplicate, so one is corruption, and the C++ reader refuses it)."""

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


def loads(text):
    """json.loads refusing non-finite constants and duplicate keys (ValueError; json.JSONDecodeError
    is one)."""
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique)
