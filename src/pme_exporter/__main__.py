"""``python -m pme_exporter`` and the ``pme-exporter`` command.

SIGTERM and SIGINT only set a flag from the first instant: the handlers are
installed here, before the imports of the program proper (about 0.2 s), so a
stop asked for while the worker starts ends it cleanly (``EXIT_OK``), never by the signal.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP = threading.Event()


def _flag(signum: int, frame: FrameType | None) -> None:
    STOP.set()


def main() -> int:
    signal.signal(signal.SIGTERM, _flag)
    signal.signal(signal.SIGINT, _flag)
    from pme_exporter.cli import main as cli_main

    return cli_main(stop=STOP)


if __name__ == "__main__":
    sys.exit(main())
