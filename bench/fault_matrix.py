"""The fault and bad-input matrix: one JSON line per case, then one line of totals.

Each case is a test that injects one fault or one bad input into live parts (a real agent on
127.0.0.1:0, real SQLite, a PostgreSQL cluster started for the run, `lut serve` processes, tmpfs
disks mounted for the case) and checks the answer and the stored data. This script runs them
with pytest and reports, per case: the hardening class it covers, the answer expected, what was
observed ("as expected", or the failed check), whether the data was found intact and how many
stored entries were lost where the case counts them.

Usage: python bench/fault_matrix.py [-k EXPR]   (as root for the full-disk cases, as in CI)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    test: str  # tests/FILE.py::test_name (every parametrisation is a case of its own)
    kind: str  # "fault": the system must recover; "bad input": it must refuse cleanly
    hardening_class: str
    expected: str
    checks_data: bool = False  # whether the case reads the stored data back after the fault


# fmt: off
CASES = (
    Case("test_faults.py::test_postgres_restart_under_a_store_loses_nothing", "fault", "store outage",
         "writes resume on a new connection", True),
    Case("test_faults.py::test_postgres_down_past_the_reconnect_budget_is_unavailable_then_recovers", "fault",
         "store outage", "StoreUnavailable within the budget, then served again", True),
    Case("test_faults.py::test_postgres_restart_under_lut_serve_loses_nothing", "fault", "store outage",
         "lut serve serves on", True),
    Case("test_faults.py::test_postgres_restart_under_a_running_search", "fault", "store outage",
         "the search finishes and seals its kernels", True),
    Case("test_faults.py::test_stepped_clock_in_one_writer_steals_no_lease_and_reorders_no_version", "fault",
         "store outage", "leases and seal order on the server's clock", True),
    Case("test_faults.py::test_lut_serve_killed_mid_import_shows_no_partial_version", "fault", "import integrity",
         "no partial version; the file imports whole after", True),
    Case("test_faults.py::test_full_disk_under_the_sqlite_store", "fault", "store outage",
         "StoreError naming the full disk; nothing sealed half-written", True),
    Case("test_faults.py::test_full_disk_under_a_run_directory", "fault", "run files",
         "RunFileError; old file intact; no torn line", True),
    Case("test_faults.py::test_a_search_into_a_full_disk_stops_with_a_clear_error", "fault", "run files",
         "exit 1 with a one-line error"),
    Case("test_store.py::test_an_import_beside_an_open_build_of_the_same_device", "fault", "import integrity",
         "both versions whole", True),
    Case("test_store.py::test_corrupt_exports_are_refused_and_nothing_is_written", "bad input", "import integrity",
         "CorruptExport naming the damage; nothing written", True),
    Case("test_store.py::test_unreachable_postgres_fails_within_its_timeout", "fault", "store outage",
         "StoreError within the timeout, password masked"),
    Case("test_store_grpc.py::test_bad_requests_are_invalid_argument_and_the_server_keeps_serving", "bad input",
         "exceptions", "INVALID_ARGUMENT; lut serve serves on"),
    Case("test_store_grpc.py::test_bad_model_uploads_are_invalid_argument_and_store_nothing", "bad input",
         "resource limits", "INVALID_ARGUMENT; nothing stored", True),
    Case("test_agent_faults.py::test_queue_beyond_its_bound_is_resource_exhausted", "bad input", "resource limits",
         "RESOURCE_EXHAUSTED"),
    Case("test_agent_faults.py::test_job_past_its_hard_timeout_is_killed_and_the_agent_serves_on", "fault",
         "resource limits", "DEADLINE_EXCEEDED; the agent serves on"),
    Case("test_agent_faults.py::test_a_runtime_crash_does_not_take_the_daemon_down", "fault", "exceptions",
         "INTERNAL for that job; the agent serves on"),
    Case("test_agent_faults.py::test_temporary_files_stay_in_the_agents_scratch_and_are_removed_even_after_a_kill",
         "fault", "temp files", "scratch removed at stop; stale runs removed at start"),
    Case("test_agent_faults.py::test_one_client_cannot_make_the_agent_allocate_without_bound", "bad input",
         "resource limits", "RESOURCE_EXHAUSTED / INVALID_ARGUMENT before allocation"),
    Case("test_agent_faults.py::test_a_worker_past_its_memory_limit_is_stopped_and_the_agent_serves_on", "fault",
         "resource limits", "RESOURCE_EXHAUSTED; a fresh worker"),
    Case("test_agent_faults.py::test_slow_uploads_cannot_hold_the_agent", "bad input", "resource limits",
         "RESOURCE_EXHAUSTED for one upload too many; health answers"),
    Case("test_agent_faults.py::test_one_profile_call_cannot_hold_the_device_past_its_budget", "bad input",
         "resource limits", "DEADLINE_EXCEEDED naming the keys left; the next call served"),
    Case("test_agent.py::test_bad_keys_get_precise_errors_and_the_batch_goes_on", "bad input", "exceptions",
         "a per-key error; the batch goes on"),
    Case("test_agent.py::test_bad_uploads_get_precise_status_codes", "bad input", "exceptions",
         "INVALID_ARGUMENT / RESOURCE_EXHAUSTED"),
    Case("test_agent.py::test_agent_keeps_serving_after_bad_input", "bad input", "exceptions", "served on"),
    Case("test_fuzz.py::test_a_mutated_key_is_a_key_or_an_op_key_error_never_a_crash", "bad input", "exceptions",
         "a key or OpKeyError"),
    Case("test_fuzz.py::test_mutated_profile_requests_never_crash_the_agent_or_answer_unknown", "bad input",
         "exceptions", "never UNKNOWN; health SERVING"),
    Case("test_fuzz.py::test_mutated_benchmark_uploads_never_crash_the_agent_or_answer_unknown", "bad input",
         "exceptions", "never UNKNOWN; health SERVING"),
    Case("test_fuzz.py::test_mutated_reprofile_requests_never_crash_the_agent_or_lose_a_version", "bad input",
         "exceptions", "never UNKNOWN; sealed versions untouched", True),
    Case("test_fuzz.py::test_mutated_requests_to_every_lut_front_rpc_never_answer_unknown_or_lose_a_sealed_version",
         "bad input", "exceptions", "never UNKNOWN; the sealed version untouched", True),
    Case("test_fuzz.py::test_json_past_the_parsers_limits_is_invalid_argument", "bad input", "exceptions",
         "INVALID_ARGUMENT"),
    Case("test_security.py::test_missing_or_wrong_token_is_unauthenticated", "bad input", "secrets",
         "UNAUTHENTICATED"),
    Case("test_secrets.py::test_a_token_is_never_sent_in_clear_to_another_machine", "bad input", "secrets",
         "refused before sending"),
    Case("test_secrets.py::test_store_errors_show_no_password", "bad input", "secrets", "password masked"),
    Case("test_secrets.py::test_the_nightly_run_keeps_the_store_password_out_of_logs_responses_and_its_state_file",
         "fault", "secrets", "password in no log, response or file"),
    Case("test_nightly.py::test_a_failing_run_is_logged_and_never_ends_the_schedule", "fault", "exceptions",
         "logged; the schedule goes on"),
)
# fmt: on


class _Collector:
    """Each case's outcome, duration, failure and recorded properties (`record_property`)."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.results.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0, "failure": None})
        result["seconds"] += report.duration
        result["properties"] = dict(report.user_properties)
        if report.failed or (report.skipped and result["outcome"] == "passed"):
            result["outcome"] = "failed" if report.failed else "skipped"
            text = report.longreprtext.strip().splitlines()
            result["failure"] = next(
                (line for line in reversed(text) if line.startswith("E ")), text[-1] if text else ""
            )


def _line(case: Case, nodeid: str, result: dict[str, Any]) -> dict[str, Any]:
    lost = result.get("properties", {}).get("entries_lost")
    passed = result["outcome"] == "passed"
    return {
        "case": nodeid.split("::", 1)[1],
        **{k: v for k, v in asdict(case).items() if k != "test"},
        "observed": "as expected" if passed else f"{result['outcome']}: {result['failure']}",
        "data_intact": (passed or None) if case.checks_data else None,  # None: not checked, or the case failed
        "entries_lost": lost,
        "seconds": round(result["seconds"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="keyword", help="only the cases whose test name matches (pytest -k)")
    args = parser.parse_args()
    collector = _Collector()
    nodeids = [f"tests/{c.test}" for c in CASES]
    pytest_args = ["-q", "-p", "no:cacheprovider", "-m", "", "--no-header", "-rN", *nodeids]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    os.chdir(ROOT)
    t0 = time.monotonic()
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            pytest.main(pytest_args, plugins=[collector])
        finally:
            sys.stdout = stdout
    lines = []
    for case in CASES:
        for nodeid, result in collector.results.items():
            if nodeid == f"tests/{case.test}" or nodeid.startswith(f"tests/{case.test}["):
                lines.append(_line(case, nodeid, result))
    for line in lines:
        print(json.dumps(line))
    checked = [x for x in lines if x["data_intact"] is not None]
    handled = [x for x in lines if x["observed"] == "as expected"]
    totals = {
        "cases": len(lines),
        "handled": len(handled),
        "clean_refusals": sum(x["kind"] == "bad input" for x in handled),
        "recoveries": sum(x["kind"] == "fault" for x in handled),
        "not_handled": [x["case"] for x in lines if x["observed"].startswith("failed")],
        "skipped": [x["case"] for x in lines if x["observed"].startswith("skipped")],
        "data_checked": len(checked),
        "data_intact": sum(x["data_intact"] is True for x in checked),
        "entries_lost": sum(x["entries_lost"] or 0 for x in lines),
        "cases_counting_entries": sum(x["entries_lost"] is not None for x in lines),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps({"totals": totals}))
    return 0 if lines and not totals["not_handled"] else 1


if __name__ == "__main__":
    sys.exit(main())
