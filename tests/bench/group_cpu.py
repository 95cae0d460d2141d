"""CPU per single event stored by group commit, at a fixed group size, with no HTTP around it.

    .venv/bin/python tests/bench/group_cpu.py --database NAME --redis-db N [--size 2]
        [--groups 400] [--marks-every 20] [--stream 7100]

`tests/bench/single_cpu.py` measures the whole server, but its CPU per request moves with the
size of the groups the committers happen to form (how the clients' connections spread over
the workers, and how busy the machine is: a busy machine makes bigger groups, so less CPU a
request). Here one thread calls `GroupCommitter.commit` with groups of `--size` requests of one
event each (the bench tenant and the events of `single_cpu.py`, fresh ids), and reads the CPU
time of this process (the committer's Python), of its PostgreSQL backend and of redis-server
(shared with anything else on the machine). The committer's marks of cached sums run every
`--marks-every` groups that left some (the committer's thread runs them every 0.25 s: about 20
to 70 groups at the benchmark's rates). Needs the data set a `single_cpu.py` run left.
Run it from the root of the worktree to measure (its code is the one imported).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

_TICK = os.sysconf("SC_CLK_TCK")
_WARM = 300  # events stored first: the catalog, names, prepared statements


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _redis_pid() -> int:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"redis-server"):
                return int(pid)
        except OSError:
            continue
    raise SystemExit("no redis-server on this machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--redis-db", type=int, required=True)
    parser.add_argument("--size", type=int, default=2, help="requests (one event each) a group")
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--marks-every", type=int, default=20)
    parser.add_argument("--stream", type=int, default=7100, help="seed of the events (fresh ids)")
    args = parser.parse_args()
    from tests.bench.harness import bench_environment

    bench_environment(args.database, args.redis_db)
    import django

    django.setup()
    from django.db import connection

    from costmon.core.models import Tenant
    from costmon.core.tenancy import unscoped
    from tests.bench.phases import as_payload, fresh_batches
    from usage import grouping
    from usage.ingest import parse_batch

    with unscoped():
        tenant = Tenant.objects.get(slug="bench")
    redis_pid = _redis_pid()
    total = _WARM + args.groups * args.size
    events = [parse_batch([as_payload(e)]) for e in fresh_batches(total, 1, stream=args.stream)[0]]
    committer = grouping.GroupCommitter()
    marked = 0

    def store(start: int) -> None:
        nonlocal marked
        group = [grouping._Waiting(tenant, None, events[start + i]) for i in range(args.size)]
        if committer.commit(group):
            errors = [w.future.exception() for w in group]
            raise SystemExit(f"a group failed: {errors!r}")
        marks = getattr(committer, "marks", None)  # absent before the marks were deferred
        if marks is not None and len(marks):
            marked += 1
            if marked % args.marks_every == 0:
                committer.run_marks()

    for start in range(0, _WARM - args.size + 1, args.size):
        store(start)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    before = time.process_time(), _cpu(backend), _cpu(redis_pid), time.perf_counter()
    for g in range(args.groups):
        store(_WARM + g * args.size)
    after = time.process_time(), _cpu(backend), _cpu(redis_pid), time.perf_counter()
    per = 1000 / (args.groups * args.size)
    names = ("python ms", "postgres backend ms", "redis-server ms", "wall ms")
    figures = {n: round((b - a) * per, 3) for n, a, b in zip(names, before, after, strict=True)}
    print(json.dumps({"size": args.size, **figures, "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
