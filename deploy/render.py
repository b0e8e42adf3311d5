"""Fill deploy/nginx.conf's placeholders: python deploy/render.py PREFIX LISTEN REPLICA_1 REPLICA_2 > nginx.conf"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def render(prefix: str, listen: str, replica_1: str, replica_2: str) -> str:
    text = (HERE / "nginx.conf").read_text()
    for key, value in (("__PREFIX__", prefix), ("__LISTEN__", listen), ("__REPLICA_1__", replica_1),
                       ("__REPLICA_2__", replica_2)):
        text = text.replace(key, value)
    return text


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    sys.stdout.write(render(*sys.argv[1:]))
