"""Batched episodes and the Ray backend: controllers proposing a batch before its rewards arrive,
failed episodes, the [scale] settings and their errors, and whole searches on a real Ray (one
started by hadmc, and a two-node cluster on this machine) with a worker and the search killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from host.compress.policy import Policy
from host.models import build_model
from host.search.evaluate import EpisodeResult, Unscored
from host.search.loop import Recorder, RewardReference, one_by_one, run_episodes
from host.search.ppo import PPOConfig
from host.search.registry import PPOStart, make_controller
from host.search.reward import RewardConfig
from host.search.run import load_search_config, run_search
from host.search.space import SearchSpace, describe_layers
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = RewardReference(latency_ms=1.0, size_bytes=100)
W = RewardConfig()


def _space() -> SearchSpace:
    from host.compress.prune import layer_limits

    net = build_model("resnet18", 6, (3, 64, 64))
    example = torch.zeros((1, 3, 64, 64))
    return SearchSpace(
        "resnet18",
        describe_layers(net, example, layer_limits(net, example)),
        (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4W),
    )


SPACE = _space()


def _synthetic(policy: Policy, episode: int) -> EpisodeResult:
    keeps = np.array([a.keep_ratio for a in policy.layers.values()])
    int8 = np.array([a.precision is Precision.INT8 for a in policy.layers.values()])
    return EpisodeResult(float(np.mean(keeps) * np.mean(int8)), float(np.mean(keeps)) + 0.1, 0, 100, (), 0)


# ---- batches without a device ----


@pytest.mark.parametrize("name", ["ppo", "random", "uniform", "dqn"])
def test_a_batched_run_is_reproducible_and_resumes_at_batch_granularity(name, tmp_path):
    batches = []

    def make():
        return make_controller(name, SPACE, PPOConfig(), seed=3)

    straight = run_episodes(
        make(), one_by_one(_synthetic), 7, BASE, W, record=Recorder(batch_done=batches.append), parallel=3
    )
    assert batches == [3, 6, 7] and [e.index for e in straight] == list(range(7))
    again = run_episodes(make(), one_by_one(_synthetic), 7, BASE, W, parallel=3)
    assert [e.policy for e in again] == [e.policy for e in straight]
    first = make()
    seen = run_episodes(first, one_by_one(_synthetic), 3, BASE, W, parallel=3)  # killed after its first batch
    torch.save(first.state_dict(), tmp_path / "c.pt")
    resumed = make()
    resumed.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=False))
    seen += run_episodes(resumed, one_by_one(_synthetic), 7, BASE, W, start_episode=3, parallel=3)
    assert [e.policy for e in seen] == [e.policy for e in straight]
    assert [e.reward for e in seen] == [e.reward for e in straight]


def test_ppo_learns_a_batch_in_episode_order_and_updates_once_it_is_whole():
    controller = make_controller("ppo", SPACE, PPOConfig(), seed=0)
    agent = controller.agent
    policies = [controller.propose(i) for i in range(3)]
    steps = len(SPACE.layers)
    assert agent.open_episodes == [0, steps, 2 * steps] and len(agent.rollout) == 3 * steps
    controller.observe(0.5, _synthetic(policies[0], 0))
    assert agent.rollout.rewards[steps - 1] == 0.5 and agent.rollout.dones[steps - 1]
    assert len(agent.rollout) == 3 * steps  # no update while episodes of the batch are open
    controller.abandon()  # the second could not be scored: its steps leave the rollout
    assert len(agent.rollout) == 2 * steps and agent.open_episodes == [steps]
    controller.observe(0.25, _synthetic(policies[2], 2))
    assert len(agent.rollout) == 0 and agent.open_episodes == []  # the batch is whole: one update


def test_a_batch_never_mixes_the_warm_start_with_the_agents_episodes():
    proposals = [SPACE.policy([0.9] * len(SPACE.layers), [Precision.INT8] * len(SPACE.layers))] * 3
    controller = make_controller("ppo", SPACE, PPOConfig(), seed=0, start=PPOStart(proposals=proposals))
    batches = []
    episodes = run_episodes(
        controller, one_by_one(_synthetic), 7, BASE, W, record=Recorder(batch_done=batches.append), parallel=2
    )
    assert batches == [2, 3, 5, 7] and [e.policy for e in episodes[:3]] == proposals and controller.warm


@pytest.mark.parametrize("name", ["ppo", "random", "dqn", "amc"])
def test_a_failed_episode_is_recorded_and_not_learnt_from(name):
    from host.search.reward import params_constraint
    from host.search.space import ParamCounter

    net = build_model("resnet18", 6, (3, 64, 64))
    counter = ParamCounter(net, torch.zeros((1, 3, 64, 64)), 8)
    base = sum(p.numel() for p in net.parameters())
    constraint = params_constraint(counter, base, 0.5) if name == "amc" else None
    controller = make_controller(name, SPACE, PPOConfig(), seed=1, constraint=constraint)

    def score(batch):
        return [Unscored("WorkerCrashedError: killed") if i == 1 else _synthetic(p, i) for i, p in batch]

    failed, seen = [], []
    episodes = run_episodes(controller, score, 4, BASE, W, record=Recorder(seen.append, failed.append), parallel=2)
    assert [e.index for e in episodes] == [0, 2, 3] and seen == episodes
    assert [(f.index, f.reason) for f in failed] == [(1, "WorkerCrashedError: killed")]
    assert not controller.open


@pytest.mark.parametrize(
    ("scale", "search", "message"),
    [
        ({}, {"parallel_episodes": 0}, r"parallel_episodes = 0: give 1 \.\. the episode budget \(4\)"),
        ({}, {"parallel_episodes": 5}, r"parallel_episodes = 5: give 1 \.\. the episode budget \(4\)"),
        ({"backend": "spark"}, {}, r"backend = 'spark': choose among local, ray"),
        ({"ray_address": "auto"}, {}, r"ray_address = 'auto' is for backend = \"ray\""),
        ({"backend": "ray", "cpus_per_task": 0}, {}, "cpus_per_task = 0"),
        ({"backend": "ray", "ray_address": "auto", "num_cpus": 2}, {}, "num_cpus sizes a Ray started here"),
    ],
)
def test_scale_config_errors(scale, search, message):
    with pytest.raises(ConfigError, match=message):
        load_search_config(None, {"search": {"episodes": 4, **search}, "scale": scale})


def test_ray_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install 'hadmc\[ray\]'"):
        load_search_config(None, {"scale": {"backend": "ray"}})


def test_an_unreachable_ray_address_fails_fast_naming_it(tmp_path):
    pytest.importorskip("ray")
    from host.search.scale import ScaleError

    config = load_search_config(None, {"scale": {"backend": "ray", "ray_address": "ray://127.0.0.1:1"}})
    t0 = time.monotonic()
    with pytest.raises(ScaleError, match=r"the Ray cluster at ray://127\.0\.0\.1:1 does not answer"):
        run_search(config, tmp_path / "run", progress=False)
    assert time.monotonic() - t0 < 10 and not (tmp_path / "run" / "episodes.jsonl").exists()
    with pytest.raises(ConfigError, match=r"ray_address = 'head': give \"auto\" or \"ray://host:port\""):
        run_search(load_search_config(None, {"scale": {"backend": "ray", "ray_address": "head"}}), tmp_path / "r2")


class _SlowStartingRay:
    """Ray's module as a busy machine shows it: its local node misses Ray's 30 s `late` times."""

    def __init__(self, late: int) -> None:
        self.late, self.inits, self.shutdowns = late, 0, 0

    def init(self, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.late:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_node_that_starts_late_is_started_once_more():
    from host.search.scale import ScaleError, ScaleSettings, _start_ray

    once = _SlowStartingRay(late=1)
    _start_ray(once, ScaleSettings(backend="ray"))
    assert (once.inits, once.shutdowns) == (2, 1)
    never = _SlowStartingRay(late=5)
    with pytest.raises(ScaleError, match=r"Ray's node on this machine did not start in 2 tries: The current node"):
        _start_ray(never, ScaleSettings(backend="ray"))
    assert (never.inits, never.shutdowns) == (2, 2)
    joining = _SlowStartingRay(late=1)  # a cluster's own node is not ours to restart
    with pytest.raises(Exception, match="timed out during startup"):
        _start_ray(joining, ScaleSettings(backend="ray", ray_address="auto"))
    assert joining.inits == 1


# ---- whole searches on a real Ray ----

TINY = {
    "model": "mlp",
    "data": {"name": "breast-cancer"},
    "search": {
        "controllers": ["ppo"],
        "episodes": 4,
        "episode_samples": 64,
        "warm_start": 0,
        "parallel_episodes": 2,
        "alternatives": [],
    },
    "baseline": {"epochs": 2},
    "final_distill": {"epochs": 1},
    "select": {"top": 1},
    # A microsecond MLP on a busy machine can read past the drift check's 10%; its re-profile would
    # give a second run another LUT, so another prior and other proposals than the first run's.
    "lut": {"max_drift": 0.0},
}


def _tiny(agent, tmp_path, scale: dict, **search) -> dict:
    """A tiny search's overrides on the test agent, with `scale` and `search` changes."""
    return {
        **TINY,
        "search": {**TINY["search"], **search},
        "scale": scale,
        "device": {"name": agent.address},
        "store": f"sqlite:///{tmp_path / 'lut.sqlite'}",
    }


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def _toml(overrides: dict) -> str:
    """`overrides` as a search TOML (tables of scalars and lists of strings)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in overrides.items() if not isinstance(v, dict)]
    for table, values in overrides.items():
        if isinstance(values, dict):
            lines += [f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def test_a_ray_search_killed_and_resumed_records_the_episodes_of_a_local_one(agent, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    run_search(load_search_config(None, _tiny(agent, tmp_path, {})), tmp_path / "local", progress=False)
    # The same search on a Ray that hadmc starts, in a process killed after its first batch.
    config = tmp_path / "search.toml"
    config.write_text(_toml(_tiny(agent, tmp_path, {"backend": "ray", "num_cpus": 2})))
    out = tmp_path / "ray"
    env = {**os.environ, "HADMC_HOME": str(tmp_path / "home")}
    argv = [sys.executable, "-m", "host.cli", "search", "--config", str(config), "--out", str(out)]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    children: set[psutil.Process] = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "checkpoints" / "ppo.pt").exists() and proc.poll() is None:
        children |= set(psutil.Process(proc.pid).children(recursive=True))
        time.sleep(0.1)
    if proc.poll() is None:
        children |= set(psutil.Process(proc.pid).children(recursive=True))
    proc.kill()
    proc.wait()
    for child in children:  # the killed driver's Ray: nothing of it survives into the resumed run
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    first = _rows(out)[:2]  # a line of the next batch, if written before the kill, is not checkpointed yet
    assert [r["episode"] for r in first] == [0, 1], log.read_text()[-3000:]
    done = subprocess.run([*argv, "--resume", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    local, resumed = _rows(tmp_path / "local"), _rows(out)
    assert resumed[:2] == first and [r["episode"] for r in resumed] == [0, 1, 2, 3]
    assert [r["policy"] for r in resumed] == [r["policy"] for r in local]  # the same proposals, in order
    assert [r["val_accuracy"] for r in resumed] == pytest.approx([r["val_accuracy"] for r in local], abs=0.03)
    assert all(r["seconds"]["finetune_s"] > 0 and r["seconds"]["latency_s"] > 0 for r in resumed)
    assert json.loads(done.stdout)["controllers"]["ppo"]["measured_latency"]["median_ms"] > 0
    assert not (out / "failures.jsonl").exists()


def test_a_hirelc_search_scores_each_cycles_candidates_on_ray(agent, tmp_path, monkeypatch):
    """hirelc with parallel_episodes = 2: two cycles of two candidates (the consensus and a draw),
    each pair fine-tuned at once on a Ray that hadmc starts."""
    pytest.importorskip("ray")
    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    overrides = _tiny(agent, tmp_path, {"backend": "ray", "num_cpus": 2}, controllers=["hirelc"])
    overrides["hirelc"] = {"lla_timesteps": 10, "hla_timesteps": 20, "hla_burst": 10, "surrogate_min": 1}
    summary = run_search(load_search_config(None, overrides), tmp_path / "run", progress=False)
    rows = _rows(tmp_path / "run")
    assert [r["hirelc"]["cycle"] for r in rows] == [0, 0, 1, 1]
    assert [r["hirelc"]["replay_buffer"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["policy"] != rows[1]["policy"] and rows[2]["policy"] != rows[3]["policy"]
    assert summary.controllers["hirelc"].measured_latency is not None


def _kill_finetunes(count: int, stop: threading.Event, killed: list[int]) -> None:
    """Kill the first `count` Ray workers seen running a fine-tune task (SIGKILL, mid-task)."""
    while not stop.is_set() and len(killed) < count:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "ray::_finetune" in cmdline and proc.info["pid"] not in killed:
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                break
        time.sleep(0.02)


def _search_killing(count: int, config, out: Path) -> list[int]:
    """Run a search while its first `count` fine-tune workers are killed; their pids."""
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_finetunes, args=(count, stop, killed))
    watcher.start()
    try:
        run_search(config, out, progress=False)
    finally:
        stop.set()
        watcher.join()
    return killed


def test_a_two_node_cluster_runs_a_search_and_a_killed_worker_is_retried(agent, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # Fine-tunes long enough to be caught running.
        overrides = _tiny(agent, tmp_path, {"backend": "ray", "ray_address": cluster.address}, episodes=2)
        overrides["episode_distill"] = {"epochs": 40, "lr": 3e-4}
        killed = _search_killing(1, load_search_config(None, overrides), tmp_path / "run")
        assert len(killed) == 1, "no fine-tune was caught running"
        assert [r["episode"] for r in _rows(tmp_path / "run")] == [0, 1]  # retried: nothing lost
        assert not (tmp_path / "run" / "failures.jsonl").exists() and not ray.is_initialized()
        # One batch at a time, the first task killed twice (it and its one retry): its episode is
        # recorded as failed, with the reason, and the search goes on.
        overrides["search"]["parallel_episodes"] = 1
        killed = _search_killing(2, load_search_config(None, overrides), tmp_path / "twice")
        assert len(killed) == 2
        failures = [json.loads(line) for line in (tmp_path / "twice" / "failures.jsonl").read_text().splitlines()]
        assert [f["episode"] for f in failures] == [0] and "WorkerCrashedError after 2 attempts" in failures[0][
            "reason"
        ]
        assert [r["episode"] for r in _rows(tmp_path / "twice")] == [1]
    finally:
        cluster.shutdown()


def test_an_experiments_seeds_run_as_ray_tasks_against_a_remote_device(agent, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    from host.experiment.config import load_experiment
    from host.experiment.run import run_experiment

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = tmp_path / "experiment.toml"
    # The test agent listens on 127.0.0.1: "remote" says no Ray node runs on its machine (as for a
    # device behind an SSH tunnel), so the seeds may run beside one another.
    config.write_text(
        '[scale]\nbackend = "ray"\nnum_cpus = 2\ndevice_location = "remote"\n'
        "[search]\nalternatives = []\n[select]\ntop = 1\n"
        '[[experiment.cases]]\nmodel = "mlp"\n[experiment.cases.data]\nname = "breast-cancer"\n'
    )
    experiment = load_experiment(
        "cross-dataset", "tiny", config, seeds=2, devices=[agent.address], store=f"sqlite:///{tmp_path / 'l.sqlite'}"
    )
    results = run_experiment(experiment, tmp_path / "e", progress=True)
    assert "seeds 0, 1 as Ray tasks" in capsys.readouterr().err
    assert results.seeds == (0, 1) and all((tmp_path / "e" / f"seed{s}" / "result.json").exists() for s in (0, 1))
    seeds = [json.loads((tmp_path / "e" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
    assert seeds[0] != seeds[1]  # two searches, not one twice


# hirelc-ablation's five searches as Ray tasks (about 30 s) run with -m slow: the default run keeps
# the ablation's fine-tunes as Ray tasks, and an experiment's seeds as Ray searches (above).
@pytest.mark.parametrize("study", [pytest.param("hirelc-ablation", marks=pytest.mark.slow), "ablation"])
def test_a_seeds_independent_work_runs_as_ray_tasks(study, agent, tmp_path, monkeypatch, capsys):
    """One seed on a remote device: hirelc-ablation's five searches at once, or the ablation's six
    fine-tunes of the policy its search found."""
    pytest.importorskip("ray")
    from host.experiment.config import load_experiment
    from host.experiment.run import run_experiment
    from host.experiment.studies import ABLATION, HIRELC_VARIANTS

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    config = tmp_path / "experiment.toml"
    config.write_text('[scale]\nbackend = "ray"\nnum_cpus = 2\ndevice_location = "remote"\n')
    experiment = load_experiment(
        study, "tiny", config, devices=[agent.address], store=f"sqlite:///{tmp_path / 'l.sqlite'}"
    )
    results = run_experiment(experiment, tmp_path / "e", progress=True)
    said, seed = capsys.readouterr().err, tmp_path / "e" / "seed0"
    if study == "hirelc-ablation":
        assert "[hirelc-ablation] 5 searches as Ray tasks: seed 0: full;" in said
        assert [row.label for row in results.rows] == [(v,) for v in HIRELC_VARIANTS]
        configs = [json.loads((seed / f"variant{i}" / "config.json").read_text()) for i in range(5)]
        assert [c["hirelc"]["sensitivity"] for c in configs] == [True, True, True, True, False]
        assert all((seed / f"variant{i}" / "summary.json").exists() for i in range(5))
    else:
        assert "[ablation] 6 fine-tunes as Ray tasks" in said
        assert [row.label[0] for row in results.rows][1:] == [label for label, *_ in ABLATION]
        found = json.loads((seed / "search" / "summary.json").read_text())["controllers"]["ppo"]["policy"]["layers"]
        pqd = json.loads((seed / "pqd" / "summary.json").read_text())["compressed"]["policy"]["layers"]
        assert pqd == found  # the full row is the policy the search found
        assert {
            a["precision"]
            for a in json.loads((seed / "p" / "summary.json").read_text())["compressed"]["policy"]["layers"].values()
        } == {"fp32"}


@pytest.mark.parametrize(
    "addresses, separate",
    [
        (["127.0.0.1:50051", "127.0.0.1:50052"], False),
        (["localhost:50051", "127.0.0.1:50052"], False),  # two names of this machine
        (["jetson-1.lab:50051", "JETSON-1.lab:50052"], False),
        (["jetson-1.lab:50051", "jetson-2.lab:50051"], True),
        (["[fd00::1]:50051", "jetson-2:50051", "127.0.0.1:1"], True),
        (["box", "jetson-2.lab:1"], True),  # a name from the devices file
        (["box", "jetson-1.lab:2"], False),
    ],
)
def test_cross_device_searches_overlap_only_on_separate_machines(addresses, separate, tmp_path):
    from host.experiment.config import load_experiment
    from host.experiment.parallel import on_separate_machines

    devices = tmp_path / "devices.toml"
    devices.write_text('[devices.box]\naddress = "jetson-1.lab:50051"\n')
    config = tmp_path / "e.toml"
    config.write_text(f'[device]\ndevices_file = "{devices}"\n')
    experiment = load_experiment("cross-device", "tiny", config, devices=addresses)
    assert on_separate_machines(experiment) is separate


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x * x


def test_experiment_tasks_report_each_result_and_name_what_failed(tmp_path):
    """The runner behind parallel seeds and cross-dataset cases: results as they finish, a failed
    task named after the others finish."""
    pytest.importorskip("ray")
    from host.experiment.config import load_experiment
    from host.experiment.parallel import run_tasks
    from host.search.scale import ScaleError

    config = tmp_path / "e.toml"
    config.write_text('[scale]\nbackend = "ray"\nnum_cpus = 2\n')
    experiment = load_experiment("cross-dataset", "tiny", config)
    seen = {}
    calls = [(f"x{i}", (i,)) for i in (1, 2, 3, 4)]
    with pytest.raises(
        ScaleError, match=r"1 task\(s\) failed on Ray \(x3: RayTaskError: ValueError: three is refused\)"
    ):
        run_tasks(experiment, _square_or_fail, calls, seen.__setitem__)
    assert seen == {"x1": 1, "x2": 4, "x4": 16}


def test_a_controller_whose_every_episode_failed_stops_the_search(agent, tmp_path, monkeypatch):
    from host.search import run

    class Failing:
        def __call__(self, batch):
            return [Unscored("RayTaskError: out of memory") for _ in batch]

        def close(self):
            pass

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(run, "open_scorer", lambda evaluator, settings: Failing())
    with pytest.raises(run.RunFileError, match=r"\[ppo\] no episode was scored: every one failed"):
        run_search(load_search_config(None, _tiny(agent, tmp_path, {})), tmp_path / "run", progress=False)
    failures = (tmp_path / "run" / "failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in failures] == ["RayTaskError: out of memory"] * 4


def test_processes_writing_one_file_at_once_each_leave_it_whole(tmp_path):
    """Parallel seeds cache one teacher: every writer's rename must find its own temporary file."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom host.runs import write_bytes\n"
        "for i in range(200):\n    write_bytes(Path(sys.argv[1]), sys.argv[2].encode() * 1000)\n"
    )
    target = tmp_path / "teacher.pt"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag], cwd=ROOT) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert target.read_bytes() in (b"a" * 1000, b"b" * 1000) and not list(tmp_path.glob("*.tmp"))


def test_the_local_backend_never_imports_ray():
    code = (
        "import sys\nimport host.cli, host.search.run, host.experiment.run, host.search.scale\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-1000:]


def _wait_for_port(port: int) -> None:
    """Until the Ray client server of a just-started head answers."""
    import socket

    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow  # a minute: two Ray heads started, one lost mid-run
def test_a_lost_head_stops_the_run_cleanly_and_resume_continues(agent, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import socket

    from ray.cluster_utils import Cluster

    from host.search.scale import ScaleError

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_CLIENT_RECONNECT_GRACE_PERIOD", "3")  # Ray client's wait for a lost server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    head = {"num_cpus": 2, "include_dashboard": False, "ray_client_server_port": port}
    overrides = _tiny(agent, tmp_path, {"backend": "ray", "ray_address": f"ray://127.0.0.1:{port}"})
    overrides["episode_distill"] = {"epochs": 40, "lr": 3e-4}  # batches long enough to lose the head in
    config, out = load_search_config(None, overrides), tmp_path / "run"
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        _wait_for_port(port)

        def lose_the_head_after_the_first_batch():
            deadline = time.monotonic() + 240
            while not (out / "checkpoints" / "ppo.pt").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            cluster.shutdown()

        killer = threading.Thread(target=lose_the_head_after_the_first_batch)
        killer.start()
        with pytest.raises(ScaleError, match=r"the Ray cluster was lost during episodes 2\.\.3 .*--resume"):
            run_search(config, out, progress=False)
        killer.join()
    finally:
        cluster.shutdown()
    assert [r["episode"] for r in _rows(out)] == [0, 1]  # the first batch, kept
    cluster = Cluster(initialize_head=True, head_node_args=head)  # the head back, at its address
    try:
        _wait_for_port(port)
        run_search(config, out, resume=True, progress=False)
    finally:
        cluster.shutdown()
    assert [r["episode"] for r in _rows(out)] == [0, 1, 2, 3]
