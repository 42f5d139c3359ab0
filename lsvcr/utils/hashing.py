"""One short content hash for settings: the key of every cache directory the stages derive."""

from __future__ import annotations

import hashlib
import json


def short_hash(obj, length: int = 10) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys;
    values JSON does not know, such as paths, by their ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
