"""``key=value`` overrides on a params tree, and a validation failure as one line.

DINOv2's order: defaults <- file <- overrides; :mod:`pipeline.config` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import ParamsError


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def one_line(exc: ValidationError, source: str) -> str:
    """Every validation problem, each as ``dotted.key: message (got value)``, in one line."""
    problems = []
    for err in exc.errors():
        key = _dotted(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif (
            "input" in err
            and err["type"] not in ("missing", "value_error")
            and not isinstance(err["input"], Mapping)  # a whole section: the key says where
        ):
            message = f"{message} (got {err['input']!r})"
        problems.append(f"{key}: {message}" if key else message)
    return f"{source}: " + "; ".join(problems)


def _set_dotted(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{source}: {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``['pretrain.epochs=3', 'data.label_fractions=[1.0, 0.5]']`` -> typed (key, value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {item!r}: expected KEY=VALUE, e.g. pretrain.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ParamsError(f"override {item!r}: value is not valid YAML ({exc})") from None
        pairs.append((key.strip(), value))
    return pairs


def with_overrides(tree: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``tree`` with each ``KEY=VALUE`` set at its dotted key."""
    merged = _deep_copy(tree)
    for key, value in parse_overrides(overrides):
        _set_dotted(merged, key, value, f"override {key}")
    return merged


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
