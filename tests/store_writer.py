"""`python -m tests.store_writer URL VERSION_ID PREFIX BATCHES BATCH_SIZE`: one writer process."""

import sys

from lut_store.store import open_store
from tests.helpers import synthetic_entries


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
            store.add_entries(version_id, synthetic_entries(f"{prefix}-{b}", size))


if __name__ == "__main__":
    main()
