"""Where the exporter's Python time per event goes on the consumer side, without servers.

    python benchmarks/consumer_side.py [--orders 20000] [--repeat 5]

On a generated trading day (the harness's events), best of ``--repeat``:
decoding alone (``Decoder.decode``), then decoding into a batch's buffers
(``Batch.add``) without and with collapse, then with what flush lanes add (parents
tracked, children held back for another lane's unwritten parents). The flusher's side (COPY, commit) and
librdkafka's consume are what the end-to-end figure adds. Asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable

from pme_exporter.buffers import Batch, InMemoryMessage
from pme_exporter.decode import Decoder
from pme_exporter.devtools.generator import trading_day


def best_us_per_event(work: Callable[[], None], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best / events * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=30_000, help="events per batch (PME_MAX_BATCH_EVENTS)")
    args = parser.parse_args(argv)
    if min(args.orders, args.repeat, args.batch) < 1:
        parser.error("--orders, --repeat and --batch must be positive")
    values = [v for _, v in trading_day(args.orders, seed=1) if v is not None]
    messages = [InMemoryMessage(v, i % 6, i) for i, v in enumerate(values)]
    decoder = Decoder()
    gc.freeze()  # as the worker does after start-up (app.tune_gc)

    def decode_only() -> None:
        for value in values:
            decoder.decode(value)

    def into_batches(collapse: bool) -> Callable[[], None]:
        def work() -> None:
            for start in range(0, len(messages), args.batch):
                Batch(decoder=decoder, collapse=collapse).add(messages[start : start + args.batch])  # type: ignore[arg-type]

        return work

    def with_lanes() -> None:
        """Two lanes: parents tracked, and each batch's children checked against the parents
        of the batch before it, as another lane's unwritten batch."""
        before: dict[str, set[str]] = {}
        for start in range(0, len(messages), args.batch):
            batch = Batch(decoder=decoder, track_parents=True)
            batch.add(messages[start : start + args.batch])  # type: ignore[arg-type]
            batch.hold_children(before)
            before = batch.parent_keys

    n = len(values)
    print(f"{n:,} events of a generated trading day, best of {args.repeat}:")
    print(
        f"  decode only                        {best_us_per_event(decode_only, n, args.repeat):6.2f} us/event"
    )
    print(
        f"  decode into buffers, no collapse   {best_us_per_event(into_batches(False), n, args.repeat):6.2f} us/event"
    )
    print(
        f"  decode into buffers, collapse      {best_us_per_event(into_batches(True), n, args.repeat):6.2f} us/event"
    )
    print(
        f"  … and two lanes' parent tracking and holding {best_us_per_event(with_lanes, n, args.repeat):6.2f} us/event"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
