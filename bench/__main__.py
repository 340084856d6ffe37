"""``python -m bench [earn] [batch] [quote] [expiry] [tiers]``: run the benchmarks (all five by
default), each with its own defaults, and print the figures. For their options, run each module
on its own: ``python -m bench.earn_http``, ``python -m bench.batch_ingest``,
``python -m bench.quote``, ``python -m bench.expiry_scale``, ``python -m bench.tier_scale``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench import batch_ingest, earn_http, expiry_scale, quote, tier_scale

BENCHMARKS: dict[str, Callable[[list[str]], None]] = {
    "earn": earn_http.main,
    "batch": batch_ingest.main,
    "quote": quote.main,
    "expiry": expiry_scale.main,
    "tiers": tier_scale.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.names or list(BENCHMARKS):
        print(f"\n== {name}", flush=True)
        BENCHMARKS[name]([])


if __name__ == "__main__":
    main()
