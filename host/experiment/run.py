"""`hadmc experiment NAME --out DIR`: one study, seed after seed, into one directory.

DIR holds experiment.json (the study and its resolved configs), seed<N>/ (the runs of each seed
and its result.json), results.json (the table over seeds, mean +- sample std), tables.md and
report.html with its plots. A seed with a result.json is done; `--resume` runs the rest (a killed
search inside a seed resumes from its checkpoints), and `--resume --seeds N` adds seeds up to N.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from host.experiment.config import Experiment
from host.experiment.parallel import on_ray, run_tasks
from host.experiment.results import Results, SeedResult
from host.experiment.studies import STUDY
from host.runs import read_json, read_record, to_doc, write_json, write_record
from lut_store.tomlfile import ConfigError


def _stored_study(out: Path) -> str | None:
    path = out / "experiment.json"
    if not path.exists():
        return None
    doc = read_json(path)
    return doc.get("study") if isinstance(doc, dict) else None


def run_experiment(experiment: Experiment, out: Path, progress: bool = True) -> Results:
    """A new experiment in `out` (absent or empty)."""
    experiment.check()
    stored = _stored_study(out)
    if stored is not None and stored != experiment.study:
        raise ConfigError(
            f"{out} holds a {stored!r} experiment: choose another --out for {experiment.study!r} "
            f"(hadmc experiment {stored} --out {out} --resume continues that one)"
        )
    if stored is not None:
        raise ConfigError(
            f"{out} already holds a {stored!r} experiment: pass --resume to continue it or choose another --out"
        )
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no experiment: choose another --out")
    study = STUDY[experiment.study]
    if study.prepare is not None:
        experiment = study.prepare(experiment, progress)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "experiment.json", experiment.to_doc())
    return _run(experiment, out, progress)


def resume_experiment(study: str, out: Path, seeds: int | None = None, progress: bool = True) -> Results:
    """Continue the experiment in `out` with the configs it was started with; `seeds` above its
    count runs the seeds that follow (the settings, a sota budget included, stay as stored)."""
    stored = _stored_study(out)
    if stored is None:
        raise ConfigError(
            f"--resume: {out} holds no experiment (no experiment.json); run without --resume to start one"
        )
    if stored != study:
        raise ConfigError(
            f"{out} holds a {stored!r} experiment, not {study!r}: run hadmc experiment {stored} --out "
            f"{out} --resume, or choose another --out"
        )
    experiment = Experiment.from_doc(read_json(out / "experiment.json"), str(out / "experiment.json"))
    if seeds is not None and seeds < experiment.settings.seeds:
        raise ConfigError(
            f"the experiment in {out} runs {experiment.settings.seeds} seeds: --seeds with --resume "
            f"adds seeds, it cannot drop any (give at least {experiment.settings.seeds})"
        )
    experiment.check()
    if seeds is not None and seeds > experiment.settings.seeds:
        experiment = replace(experiment, settings=replace(experiment.settings, seeds=seeds))
        write_json(out / "experiment.json", experiment.to_doc())
    return _run(experiment, out, progress)


def _run(experiment: Experiment, out: Path, progress: bool) -> Results:
    from host.report.experiment import build_experiment_report

    study = STUDY[experiment.study]
    done: dict[int, SeedResult] = {}
    todo: list[tuple[int, Path]] = []
    for i in range(experiment.settings.seeds):
        seed = experiment.search.search.seed + i
        directory = out / f"seed{seed}"
        result_path = directory / "result.json"
        if result_path.exists():
            done[seed] = read_record(result_path, SeedResult)
        else:
            directory.mkdir(exist_ok=True)
            todo.append((seed, directory))
    if len(todo) > 1 and on_ray(experiment):
        if progress:
            seeds = ", ".join(str(seed) for seed, _ in todo)
            print(f"[{study.name}] seeds {seeds} as Ray tasks ...", file=sys.stderr, flush=True)

        def finished(label: str, result: SeedResult) -> None:
            write_record(out / label / "result.json", result)
            if progress:
                print(f"[{study.name}] {label} done", file=sys.stderr, flush=True)

        calls = [(directory.name, (experiment, seed, directory, False)) for seed, directory in todo]
        found = run_tasks(experiment, study.run_seed, calls, finished)
        done |= {seed: found[directory.name] for seed, directory in todo}
    for seed, directory in todo:
        if seed in done:
            continue
        if progress:
            print(
                f"[{study.name}] seed {seed} ({seed - experiment.search.search.seed + 1} of "
                f"{experiment.settings.seeds}) ...",
                file=sys.stderr,
                flush=True,
            )
        done[seed] = study.run_seed(experiment, seed, directory, progress)
        write_record(directory / "result.json", done[seed])
    done_in_order = [done[seed] for seed in sorted(done)]
    results = Results.aggregate(
        study.name,
        study.title,
        study.rows_doc,
        study.labels,
        study.columns,
        done_in_order,
        study.reference,
        study.tested,
    )
    write_json(out / "results.json", to_doc(results))
    (out / "tables.md").write_text(tables_markdown(results))
    build_experiment_report(out)
    return results


def tables_markdown(results: Results) -> str:
    parts = [f"# {results.title}", results.rows_doc, f"{results.seeds_text().capitalize()}.", results.markdown()]
    if len(results.labels) == 2 and any(c.key == "speedup" for c in results.columns):
        parts += ["Speedup over FP32 as a matrix:", results.matrix_markdown("speedup")]
        if any(c.key == "latency_ms" for c in results.columns):
            parts += ["Measured latency (ms) as a matrix:", results.matrix_markdown("latency_ms")]
    if results.tests:
        parts += [
            f"Paired tests against {' / '.join(results.reference or ())}: each cell is its mean over seeds "
            "minus the row's, with the exact two-sided p-value of a sign-flip permutation test (with n seeds "
            "no p-value can be below 2/2^n).",
            results.tests_markdown(),
        ]
    parts.append("Runs (each with its report.html): " + ", ".join(results.runs))
    return "\n\n".join(parts) + "\n"
