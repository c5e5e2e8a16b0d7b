"""Agents with tight limits: a full queue, a hard job timeout, a crashing runtime."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pytest

from device_agent.server import Agent
from host.agent_client import AgentClient, AgentError, AgentTarget
from lut_store.keys import ops
from lut_store.keys.ops import NCHW, ConvSpec
from protos.hadmc.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from tests.conftest import quick_config
from tests.helpers import memory_hog, slow_matmul_chain, small_cnn

# min_runs = 10^6 keeps a kernel measuring for tens of seconds, until cancelled.
LONG = common_pb2.MeasurementSettings(min_runs=1_000_000, max_runs=1_000_000)


@pytest.fixture(scope="module")
def tight_agent():
    running = Agent(quick_config(max_queued_jobs=1, job_timeout_s=3.0, max_model_mib=1.0)).start()
    yield running
    running.stop(grace_s=1.0)


def test_queue_beyond_its_bound_is_resource_exhausted(tight_agent):
    target = AgentTarget(tight_agent.address)
    long_job = agent_pb2.ProfileRequest(keys=[ops.conv(NCHW(1, 16, 16, 16), ConvSpec(16, 3)).to_proto()], settings=LONG)
    with (
        grpc.insecure_channel(tight_agent.address) as channel,
        AgentClient(target) as waiting,
        AgentClient(target, retries=1) as third,
    ):
        running = agent_pb2_grpc.DeviceAgentStub(channel).Profile(long_job, timeout=60)
        time.sleep(1.0)
        queued = waiting.profile([ops.elementwise("Relu", (1, 8))], timeout_s=60)
        queued_results: list = []
        waiter = threading.Thread(target=lambda: queued_results.extend(queued), daemon=True)
        waiter.start()
        time.sleep(0.5)
        with pytest.raises(AgentError, match="max_queued_jobs = 1") as exc:
            list(third.profile([ops.elementwise("Relu", (1, 8))]))
        assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert third.info().fingerprint_hash  # info is never queued
        running.cancel()  # cancel the long job: the queued one runs next
        waiter.join(20)
        assert len(queued_results) == 1 and queued_results[0].WhichOneof("outcome") == "stats"


def test_job_past_its_hard_timeout_is_killed_and_the_agent_serves_on(tight_agent, tmp_path):
    model = slow_matmul_chain(n=1024, depth=2).SerializeToString()
    assert len(model) > 1024 * 1024  # over max_model_mib = 1
    with AgentClient(AgentTarget(tight_agent.address)) as client:
        with pytest.raises(AgentError, match="over the agent's cap") as exc:
            client.benchmark(model)
        assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        heavy = slow_matmul_chain(n=256, depth=3).SerializeToString()  # 0.75 MiB
        t0 = time.monotonic()
        with pytest.raises(AgentError, match="3 s timeout") as exc:
            client.benchmark(heavy, settings=LONG)
        assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 15
        assert client.benchmark(small_cnn().SerializeToString()).latency.n >= 10


def test_a_runtime_crash_does_not_take_the_daemon_down():
    crashing = Agent(quick_config(), worker_target="tests.helpers:crash_on_benchmark").start()
    try:
        with AgentClient(AgentTarget(crashing.address)) as client:
            first_pid = crashing.runner.worker_pid
            with pytest.raises(AgentError, match="runtime crashed .*SIGSEGV") as exc:
                client.benchmark(small_cnn().SerializeToString())
            assert exc.value.code == grpc.StatusCode.INTERNAL
            assert client.health() == "SERVING"
            (r,) = client.profile([ops.elementwise("Relu", (1, 8))])
            assert r.WhichOneof("outcome") == "stats"
            assert crashing.runner.worker_pid not in (None, first_pid)
    finally:
        crashing.stop(grace_s=1.0)


def test_an_idle_worker_exits_and_comes_back_for_the_next_job():
    quick_exit = Agent(quick_config(worker_idle_exit_s=0.5)).start()
    try:
        deadline = time.monotonic() + 10
        while quick_exit.runner.worker_pid is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert quick_exit.runner.worker_pid is None  # the idle daemon holds no onnxruntime
        with AgentClient(AgentTarget(quick_exit.address)) as client:
            (r,) = client.profile([ops.elementwise("Relu", (1, 8))])
            assert r.WhichOneof("outcome") == "stats"
    finally:
        quick_exit.stop(grace_s=1.0)


def test_temporary_files_stay_in_the_agents_scratch_and_are_removed_even_after_a_kill(tmp_path):
    scratch = tmp_path / "scratch"
    stale = scratch / "run-999999999-x1"  # an agent that no longer runs (no such pid)
    stale.mkdir(parents=True)
    (stale / "upload-1.onnx").write_bytes(b"left by a killed agent")
    other = scratch / "notes"  # not an agent's run directory: left alone
    other.mkdir()
    agent = Agent(quick_config(work_dir=scratch), worker_target="tests.helpers:leave_temp_files_and_die").start()
    try:
        assert not stale.exists() and other.exists()
        (run,) = scratch.glob(f"run-{os.getpid()}-*")
        with AgentClient(AgentTarget(agent.address)) as client:
            with pytest.raises(AgentError, match="runtime crashed"):
                client.benchmark(small_cnn().SerializeToString())
            assert [p.name for p in run.glob("hadmc-kprof-*/profile.json")] == ["profile.json"]
            assert client.health() == "SERVING"
    finally:
        agent.stop(grace_s=1.0)
    assert not run.exists()


def test_one_client_cannot_make_the_agent_allocate_without_bound():
    from onnx import numpy_helper

    capped = Agent(quick_config(max_inputs_mib=0.05, max_tensor_elements=1 << 20)).start()
    model = small_cnn().SerializeToString()
    batch = numpy_helper.from_array(np.zeros((8, 3, 16, 16), np.float32), "x").SerializeToString()  # 24 KiB
    try:
        with AgentClient(AgentTarget(capped.address), retries=1) as client:
            with pytest.raises(AgentError, match="over the agent's max_inputs_mib") as exc:
                client.benchmark(model, inputs=[{"x": batch}] * 3)  # 72 KiB of inputs, 51 KiB allowed
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(AgentError, match="over the agent's max_tensor_elements") as exc:
                client.benchmark(model, batch_size=2**31)  # random inputs of 2^31 x 768 floats
            assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert client.benchmark(model, inputs=[{"x": batch}]).latency.n >= 10  # still serving
    finally:
        capped.stop(grace_s=1.0)


def test_a_worker_past_its_memory_limit_is_stopped_and_the_agent_serves_on():
    bounded = Agent(quick_config(max_worker_mib=300.0)).start()
    try:
        with AgentClient(AgentTarget(bounded.address), retries=1) as client:
            assert client.benchmark(small_cnn().SerializeToString()).latency.n >= 10  # well under the limit
            first_pid = bounded.runner.worker_pid
            with pytest.raises(AgentError, match=r"MiB of memory, past the agent's max_worker_mib = 300") as exc:
                client.benchmark(memory_hog().SerializeToString())
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.health() == "SERVING"
            assert client.benchmark(small_cnn().SerializeToString()).latency.n >= 10
            assert bounded.runner.worker_pid not in (None, first_pid)  # a fresh worker
    finally:
        bounded.stop(grace_s=1.0)


def test_slow_uploads_cannot_hold_the_agent():
    import queue

    guarded = Agent(quick_config(max_uploads=2, upload_timeout_s=2.0)).start()
    header = agent_pb2.BenchmarkRequest(header=agent_pb2.BenchmarkHeader(model_size_bytes=1000)).SerializeToString()
    stalled = []
    try:
        for _ in range(2):  # slowloris: a header, then nothing
            release: queue.Queue = queue.Queue()

            def parts(release=release):
                yield header
                release.get()

            channel = grpc.insecure_channel(guarded.address)
            call = channel.stream_unary("/hadmc.v1.DeviceAgent/Benchmark").future(parts(), timeout=60)
            stalled.append((call, release, channel))
        time.sleep(0.5)
        model = small_cnn().SerializeToString()
        with AgentClient(AgentTarget(guarded.address), retries=1) as client:
            with pytest.raises(AgentError, match="2 uploads are in progress") as exc:
                client.benchmark(model)
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.health() == "SERVING"  # the others are still served
            (r,) = client.profile([ops.elementwise("Relu", (1, 8))])
            assert r.WhichOneof("outcome") == "stats"
            for call, _, _ in stalled:  # past upload_timeout_s the stalled uploads are cancelled
                with pytest.raises(grpc.RpcError) as err:
                    call.result(timeout=10)
                assert err.value.code() == grpc.StatusCode.CANCELLED
            assert client.benchmark(model).latency.n >= 10  # and their places are free again
    finally:
        for _, release, channel in stalled:
            release.put(None)
            channel.close()
        guarded.stop(grace_s=1.0)


def test_one_profile_call_cannot_hold_the_device_past_its_budget():
    budgeted = Agent(quick_config(max_profile_s=0.3)).start()
    keys = [ops.conv(NCHW(1, 64, 48 + i, 48), ConvSpec(64, 3)).to_proto() for i in range(120)]
    try:
        with AgentClient(AgentTarget(budgeted.address), timeout_s=60.0) as client:
            got = []
            with pytest.raises(AgentError) as exc:  # no client deadline: the agent's budget ends it
                for result in client.profile(keys, timeout_s=600):
                    got.append(result.index)
            assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "max_profile_s of 0.3 s" in str(exc.value)
            assert 0 < len(got) < len(keys) and got == list(range(len(got)))
            assert f"keys {len(got)}..{len(keys) - 1} were not measured" in str(exc.value)
            assert client.health() == "SERVING"
            rest = list(client.profile(keys[len(got) : len(got) + 2]))  # the next call is served
            assert [r.index for r in rest] == [0, 1]
    finally:
        budgeted.stop(grace_s=1.0)
