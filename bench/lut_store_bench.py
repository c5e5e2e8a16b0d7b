"""LUT store benchmark: prints one JSON document.

For SQLite (a temp file, WAL, synchronous=NORMAL), the gRPC front over SQLite (loopback), and
PostgreSQL (a throwaway cluster started here as the tests do, but with fsync on):
  - insert rate in batches of 500 entries, and one entry per transaction (as a build writes);
  - batched lookups of 1,000 keys in a version of 10,000: lookups per second and keys per second.

Usage: python bench/lut_store_bench.py [--entries 10000] [--lookup-batches 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lut_store.interface import LutStore  # noqa: E402
from lut_store.records import Entry  # noqa: E402
from lut_store.store import open_store  # noqa: E402


def entries(n: int, prefix: str) -> list[Entry]:
    now = time.time()
    return [
        Entry(
            key_hash=f"{prefix}{i:08d}",
            key_json='{"v":1}',
            status="ok",
            measured_at_unix_s=now,
            median_ms=0.1 + i * 1e-4,
            mean_ms=0.1,
            p90_ms=0.12,
            std_ms=0.01,
            min_ms=0.09,
            n=200,
            settings={"target_rel_ci": 0.02},
            environment={"cpu_freq_mhz": 2000.0},
        )
        for i in range(n)
    ]


def bench_store(store: LutStore, n: int, lookup_batches: int) -> dict:
    store.ensure_device("f" * 64, {"bench": True})
    build = store.acquire_build("f" * 64, "manual", "bench", lease_s=3600)
    vid = build.version.id
    batch = entries(n, "k")
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        store.add_entries(vid, batch[start : start + 500], "bench")
    batched_s = time.perf_counter() - t0
    singles = entries(500, "s")
    t0 = time.perf_counter()
    for e in singles:
        store.add_entries(vid, [e], "bench")
    single_s = time.perf_counter() - t0
    store.seal(vid)
    rng = random.Random(0)
    keys = [e.key_hash for e in batch]
    times = []
    for _ in range(lookup_batches):
        want = rng.sample(keys, 1000)
        t0 = time.perf_counter()
        found = store.lookup(vid, want)
        times.append(time.perf_counter() - t0)
        assert len(found.entries) == 1000
    median_s = statistics.median(times)
    return {
        "entries": n + len(singles),
        "insert_batched_entries_per_s": round(n / batched_s),
        "insert_single_entries_per_s": round(len(singles) / single_s),
        "lookup_1000_keys_median_ms": round(median_s * 1000, 2),
        "lookups_of_1000_per_s": round(1 / median_s, 1),
        "looked_up_keys_per_s": round(1000 / median_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--lookup-batches", type=int, default=50)
    args = parser.parse_args()
    from host import logs

    logs.configure()  # logs to stderr: stdout is the JSON document
    result = {}
    with tempfile.TemporaryDirectory(prefix="hadmc-lutbench-") as tmp:
        with open_store(f"sqlite:///{Path(tmp) / 'lut.sqlite'}") as store:
            result["sqlite"] = bench_store(store, args.entries, args.lookup_batches)
        from lut_store.grpc_front import LutServer

        with open_store(f"sqlite:///{Path(tmp) / 'served.sqlite'}") as served:
            server = LutServer(served).start()
            try:
                with open_store(f"grpc://{server.address}") as store:
                    result["grpc_over_sqlite"] = bench_store(store, args.entries, args.lookup_batches)
            finally:
                server.stop(1.0)
    from tests.pg import PostgresServer

    server = PostgresServer(fsync=True)
    try:
        with open_store(server.new_database()) as store:
            result["postgresql"] = bench_store(store, args.entries, args.lookup_batches)
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
