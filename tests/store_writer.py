"""`python -m tests.store_writer URL VERSION_ID PREFIX BATCHES BATCH_SIZE`: one writer process."""

import sys
import time

from lut_store.records import Entry
from lut_store.store import open_store


def main() -> None:
    url, version_id, prefix, batches, size = (
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    with open_store(url) as store:
        for b in range(batches):
            entries = [
                Entry(
                    key_hash=f"{prefix}-{b}-{i}",
                    key_json="{}",
                    status="ok",
                    measured_at_unix_s=time.time(),
                    median_ms=1.0 + i,
                    mean_ms=1.0 + i,
                    p90_ms=1.1 + i,
                    std_ms=0.1,
                    min_ms=0.9,
                    n=10,
                )
                for i in range(size)
            ]
            store.add_entries(version_id, entries)


if __name__ == "__main__":
    main()
