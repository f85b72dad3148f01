"""A small element-path language for search parameters, evaluated on resource JSON.

FHIRPath is far more than search needs; the standard definitions we serve reduce to
dotted element paths with an occasional ``where`` on a sibling code. Keeping the
paths as plain strings keeps the parameter definitions data (and reviewable):

- ``name.family``: follow elements; lists are flattened at every step.
- ``telecom(system=email).value``: keep only the items whose ``system`` equals ``email``.
- ``value[x]``: a choice element; matches ``valueString``, ``valueQuantity``, ...

The root is the resource itself, so paths never start with the type name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_STEP_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*)(?P<choice>\[x\])?(?:\((?P<key>[A-Za-z]+)=(?P<val>[^()]+)\))?$")


class PathError(ValueError):
    """A parameter definition has a malformed path (a programming error, caught at import)."""


@dataclass(frozen=True)
class Step:
    name: str
    choice: bool = False
    where: tuple[str, str] | None = None


@lru_cache(maxsize=1024)
def compile_path(path: str) -> tuple[Step, ...]:
    """Parse ``path`` once; raises PathError on anything outside the language."""
    steps: list[Step] = []
    for part in path.split("."):
        m = _STEP_RE.match(part)
        if m is None:
            raise PathError(f"bad search path step {part!r} in {path!r}")
        where = (m["key"], m["val"]) if m["key"] else None
        steps.append(Step(m["name"], bool(m["choice"]), where))
    return tuple(steps)


def _children(node: Any, step: Step) -> list[Any]:
    if not isinstance(node, dict):
        return []
    if step.choice:
        n = len(step.name)
        values = [v for k, v in node.items() if k.startswith(step.name) and len(k) > n and k[n].isupper()]
    else:
        values = [node[step.name]] if step.name in node else []
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return out


def evaluate(resource: dict[str, Any], path: str) -> list[Any]:
    """Every value ``path`` reaches in ``resource`` (missing elements simply yield nothing)."""
    nodes: list[Any] = [resource]
    for step in compile_path(path):
        nodes = [child for node in nodes for child in _children(node, step)]
        if step.where is not None:
            key, val = step.where
            nodes = [n for n in nodes if isinstance(n, dict) and n.get(key) == val]
    return [n for n in nodes if n is not None]
