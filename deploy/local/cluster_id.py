"""Print a new KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

Kafka's own generator (``Uuid.randomUuid``) never returns an id that begins
with ``-``, because ``kafka-storage format -t -abc…`` reads such an id as an
option and fails; one draw in 64 would. This does the same. Stdlib only, as
deploy/local/up runs it before any virtual environment exists.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable


def new_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    while True:
        raw = random_bytes(16)
        if raw == bytes(16):
            continue  # Kafka reserves the zero id
        encoded = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if not encoded.startswith("-"):
            return encoded


if __name__ == "__main__":
    print(new_cluster_id())
