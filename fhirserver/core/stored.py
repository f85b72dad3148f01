"""``Stored``: one version of a resource as the repository hands it out (bytes as served)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Stored:
    res_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    raw: bytes
    deleted: bool = False

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.raw)
        return data

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'
