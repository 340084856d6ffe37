"""Earn over HTTP, this checkout against another, paired: two servers (one running the other
checkout's code, each on its own scratch database) take ``wrk``'s purchases in turn, R rounds
of S seconds, the order alternating each round; a first round warms both and is not counted.
The ratio of each round's two rates is what a shared, noisy machine still measures well.

    python -m bench.earn_ab --before ../other-checkout [--db postgresql|sqlite]
        [--clients 8] [--rounds 6] [--seconds 5] [--members 1000]

``--before`` is a checkout (``git worktree add /tmp/before <commit>``) whose ``src`` the first
server runs. Needs ``wrk`` (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
from pathlib import Path

from bench.earn_http import PROGRAM, drive_wrk
from bench.harness import bench_program, scratch_database, setting_line, uvicorn_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", required=True, help="the other checkout's directory")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--members", type=int, default=1000)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    before_src = Path(args.before).resolve() / "src"
    if not (before_src / "loyalty").is_dir():
        parser.error(f"{args.before} is not a checkout of this project")
    print(
        f"earn over HTTP, paired: {args.db}, {args.clients} clients (wrk), {args.rounds} rounds"
        f" of {args.seconds} s per server after one round of warm-up, {args.members:,} members;"
        f" before = {before_src}, after = this checkout"
    )
    print(setting_line(), flush=True)
    sources = {"before": str(before_src), "after": None}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in sources}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, source in sources.items():
            url = stack.enter_context(scratch_database(args.db))
            token, program_id = bench_program(url, PROGRAM)
            server = stack.enter_context(uvicorn_server(url, source=source))
            servers[name] = (server, token, program_id)
        for round_no in range(args.rounds + 1):
            order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
            for name in order:
                server, token, program_id = servers[name]
                cpu_before = server.cpu_seconds()
                run = drive_wrk(
                    server.port, token, program_id, args.clients, args.seconds, args.members
                )
                if run.errors:
                    print(f"  {name}: {run.errors} non-201 responses or socket errors")
                if round_no > 0 and run.events:
                    cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / run.events
                    results[name].append((run.rate, cpu_ms, run.p99_ms))
    for name, runs in results.items():
        rates = [r[0] for r in runs]
        print(
            f"{name:6}  events/s median {statistics.median(rates):6.0f} (min {min(rates):.0f},"
            f" max {max(rates):.0f})  server CPU {statistics.median(r[1] for r in runs):.2f}"
            f" ms/event  p99 median {statistics.median(r[2] for r in runs):.1f} ms"
        )
    ratios = [a[0] / b[0] for a, b in zip(results["after"], results["before"], strict=True)]
    print(
        f"after / before, per round: median {statistics.median(ratios):.3f}"
        f" (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
