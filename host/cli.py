"""The `hadmc` command. Subcommands import their stack lazily: `hadmc agent ...` and
`hadmc bench` run on a device with only the agent's dependencies (no torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from host import lut_cli
from host.cli_common import (
    CliError,
    add_device_args,
    add_lut_args,
    add_model_args,
    device_config,
    device_table,
    emit,
    factory_kwargs,
    lut_table,
    model_overrides,
)
from lut_store.precision import Precision

EXIT_ERROR = 1


def cmd_agent_serve(args: argparse.Namespace) -> int:
    from host.embedded import serve_agent

    overrides = {
        "listen": args.listen,
        "token_file": args.token_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "insecure": True if args.insecure else None,
        "runtime": args.runtime,
        "execution_provider": args.execution_provider,
        "openvino_device": args.openvino_device,
        "inference_precision": args.inference_precision,
        "latency_statistic": args.latency_statistic,
        "intra_op_threads": args.threads,
    }
    return serve_agent(args.config, overrides, args.ready_file)


def cmd_agent_info(args: argparse.Namespace) -> int:
    from host.agent_client import message_dict
    from host.device import open_device

    with open_device(device_config(args)) as device:
        info = device.info()
    fp = info.fingerprint
    lines = [
        f"fingerprint  {info.fingerprint_hash[:16]}",
        f"cpu          {fp.cpu.model} ({fp.cpu.physical_cores} cores / {fp.cpu.logical_cores} threads)",
        f"gpus         {', '.join(g.name for g in fp.gpus) or 'none'}",
        f"runtime      {fp.runtime} {fp.runtime_version}, {fp.execution_provider}, {fp.intra_op_threads} threads, "
        f"float layers in {fp.inference_precision}, latency of record: {fp.latency_statistic or 'median'}",
    ]
    for p in info.precisions:
        lines.append(f"{Precision.from_proto(p.precision):<12} {'yes' if p.supported else 'no '}  {p.note}")
    emit(message_dict(info), args.json, "\n".join(lines))
    return 0


def cmd_agent_reprofile(args: argparse.Namespace) -> int:
    from host.agent_client import message_dict
    from host.device import open_device

    if not args.now:
        raise CliError("say --now to re-profile now (the agent's [nightly] schedule runs by itself)")
    with open_device(device_config(args)) as device:
        resp = device.reprofile(args.reason)
    drift = (
        f", drift: median x{resp.drift_median_ratio:.3f} (p5 x{resp.drift_p5_ratio:.3f}, "
        f"p95 x{resp.drift_p95_ratio:.3f}) against version {resp.parent_version_id}"
        if resp.HasField("drift_median_ratio")
        else ""
    )
    text = (
        f"version {resp.version_id} in {resp.store_url}: {'sealed' if resp.sealed else 'left OPEN'}, "
        f"{resp.measured_ok}/{resp.keys_total} measured, {resp.unsupported} unsupported, {resp.failed} failed, "
        f"{resp.missing} missing; {resp.models_measured} registered models measured in context "
        f"({resp.in_model_keys} in-model keys), {resp.carried_forward} entries carried forward{drift}"
    )
    text += "".join(f"\n  skipped {m.name}: {m.reason}" for m in resp.skipped_models)
    text += "".join(f"\n  x{m.ratio:.3f} {m.parent_ms:.4f} -> {m.new_ms:.4f} ms  {m.name}" for m in resp.model_drift)
    emit(message_dict(resp), args.json, text)
    return 0 if resp.sealed else 3


def _bench_text(resp: Any) -> str:
    s = resp.latency
    return (
        f"batch {resp.batch_size} on {resp.execution_provider}: median {s.median_ms:.3f} ms, "
        f"p10 {s.p10_ms:.3f} ms, p90 {s.p90_ms:.3f} ms, p99 {s.p99_ms:.3f} ms (n={s.n}, CI +-{s.rel_ci95 * 100:.1f}%"
        f"{'' if s.stable else ', NOT stable'}), {resp.throughput_per_s:.1f} samples/s, "
        f"session load {resp.session_load_ms:.1f} ms"
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from host.agent_client import message_dict
    from host.device import open_device

    if not args.model.is_file():
        raise CliError(f"model file {args.model} does not exist")
    with open_device(device_config(args)) as device:
        resp = device.benchmark(args.model, batch_size=args.batch)
    emit(message_dict(resp, drop=("outputs",)), args.json, _bench_text(resp))
    return 0


def _predict_text(pred: Any, top: int = 12) -> str:
    lines = [f"{'kernel':<48} {'kind':<16} {'prec':<5} {'ms':>9}  source"]
    for k in sorted(pred.kernels, key=lambda k: -k.latency_ms)[:top]:
        lines.append(
            f"{k.name[-48:]:<48} {k.kind[:16]:<16} {k.precision:<5} {k.latency_ms:>9.4f}  {k.source}"
            + f" v{k.version_id}"
        )
    if len(pred.kernels) > top:
        lines.append(f"... {len(pred.kernels) - top} more kernels")
    lines.append(
        f"predicted {pred.latency_ms:.3f} ms at batch {pred.batch_size} from {len(pred.kernels)} kernels; "
        f"LUT versions {list(pred.version_ids)}; {pred.profiled_kernels} profiled on demand"
        + (f" (the device measured {pred.measured_ms:.3f} ms meanwhile)" if pred.measured_ms else "")
    )
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    from host.device import open_device
    from host.latency.predict import LatencyPredictor
    from lut_store.store import open_store

    if not args.model.is_file():
        raise CliError(f"model file {args.model} does not exist")
    if args.batch < 1:
        raise CliError(f"--batch must be >= 1, got {args.batch}")
    with open_device(device_config(args)) as device, open_store(args.store) as store:
        predictor = LatencyPredictor.for_device(
            store, device, offline=args.no_profile, pinned=args.version, force=args.force, batch_size=args.batch
        )
        with predictor:
            pred = predictor.predict(args.model)
    emit(pred.to_dict(), args.json, _predict_text(pred))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from host.compress.policy import Policy
    from host.compress.run import load_compress_config, run_compress
    from host.runs import to_doc

    overrides = {"device": device_table(args), "lut": lut_table(args), "store": args.store, **model_overrides(args)}
    config = load_compress_config(args.config, overrides)
    summary = run_compress(config, Policy.load(args.policy), args.out, progress=not args.json)
    base, c = summary.baseline, summary.compressed
    text = (
        f"test accuracy {base.test_accuracy:.4f} -> {c.test_accuracy:.4f} (torch), "
        f"{_number(c.test_accuracy_onnxruntime, '.4f')} in onnxruntime on the device; parameters "
        f"{base.params:,} -> {c.params:,} (-{c.params_reduction * 100:.1f}%), effective size "
        f"-{c.compression * 100:.1f}%; latency at batch {config.device.benchmark_batch}: "
        f"{_number(c.baseline_measured_latency and c.baseline_measured_latency.record_ms, '.3f')} -> "
        f"{_number(c.measured_latency and c.measured_latency.record_ms, '.3f')} ms (x{_number(c.speedup, '.2f')}); "
        f"summary in {args.out / 'summary.json'}"
    )
    emit(to_doc(summary), args.json, text)
    return 0


def _number(value: float | None, spec: str) -> str:
    """A figure, or 'not measured' (never 0) when the measurement could not be made."""
    return "not measured" if value is None else format(value, spec)


def _megabytes(size_bytes: int | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 1e6:.2f}"


def cmd_policy_init(args: argparse.Namespace) -> int:
    import torch

    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import in_execution_order, layer_limits
    from host.models import build_model

    shape = tuple(int(d) for d in args.input_shape.split(","))
    kwargs = factory_kwargs(args.factory_kwargs) or {}
    model, example = build_model(args.model, args.classes, shape, kwargs), torch.zeros((1, *shape))
    limits = layer_limits(model, example)
    names = in_execution_order(model, example, [lim.name for lim in limits])
    precision = Precision(args.precision)
    overrides = {lim.name: LayerAction(1.0, precision) for lim in limits if lim.group is None}
    if args.edge_precision:
        edge = Precision(args.edge_precision)
        overrides[names[0]] = LayerAction(args.keep, edge)
        overrides[names[-1]] = LayerAction(1.0, edge)
    policy = Policy.uniform(args.model, names, args.keep, precision, overrides)
    args.output.write_text(policy.to_json())
    print(f"policy for {len(names)} layers of {args.model} written to {args.output}", file=sys.stderr)
    return 0


def _search_text(summary: Any, out: Path) -> str:
    base = summary.baseline
    header = (
        f"{'':<16} {'val acc':>8} {'test acc':>9} {'onnxrt':>8} {'agrees':>7} {'params':>11} {'file MB':>8} "
        f"{'pred ms':>8} {'meas ms':>8} {'speedup':>8} {'reward':>7}"
    )
    measured = base.measured_latency.record_ms if base.measured_latency else None
    rows = [
        header,
        f"{'baseline':<16} {base.val_accuracy:>8.4f} {base.test_accuracy:>9.4f} "
        f"{_number(base.test_accuracy_onnxruntime, '.4f'):>8} {'':>7} {base.params:>11,} "
        f"{_megabytes(base.file_bytes):>8} {base.predicted_latency_ms:>8.3f} {_number(measured, '.3f'):>8} "
        f"{1.0:>8.2f} {'':>7}",
    ]
    for name, c in summary.controllers.items():
        measured = c.measured_latency.record_ms if c.measured_latency else None
        rows.append(
            f"{name:<16} {c.val_accuracy:>8.4f} {c.test_accuracy:>9.4f} "
            f"{_number(c.test_accuracy_onnxruntime, '.4f'):>8} "
            f"{_number(c.agreement and c.agreement.teacher_agreement, '.4f'):>7} {c.params:>11,} "
            f"{_megabytes(c.file_bytes):>8} {c.predicted_latency_ms:>8.3f} "
            f"{_number(measured, '.3f'):>8} {_number(c.speedup, '.2f'):>8} {_number(c.reward, '.4f'):>7}"
        )
    for name, a in summary.alternatives.items():
        rows.append(
            f"{name:<16} {'-':>8} {'-':>9} {a.test_accuracy_onnxruntime:>8.4f} "
            f"{a.agreement.teacher_agreement:>7.4f} {a.params:>11,} {_megabytes(a.file_bytes):>8} "
            f"{_number(a.predicted_latency_ms, '.3f'):>8} {a.measured_latency.record_ms:>8.3f} {a.speedup:>8.2f} "
            f"{'-':>7}"
        )
    rows.append(f"run directory {out} ({summary.wall_s / 60:.1f} min); report in {out / 'report.html'}")
    return "\n".join(rows)


def cmd_search(args: argparse.Namespace) -> int:
    from host.runs import to_doc
    from host.search.run import load_search_config, run_search

    if args.episodes is not None and args.episodes < 1:
        raise CliError(f"--episodes {args.episodes}: a search needs at least one episode")
    overrides = {
        "device": device_table(args),
        "lut": lut_table(args),
        "store": args.store,
        **model_overrides(args),
        "search": {
            "episodes": args.episodes,
            "controllers": args.controllers.split(",") if args.controllers else None,
            "parallel_episodes": args.parallel_episodes,
        },
        "scale": {"backend": args.backend, "ray_address": args.ray_address},
    }
    config = load_search_config(args.config, overrides)
    summary = run_search(config, args.out, resume=args.resume, progress=not args.json)
    emit(to_doc(summary), args.json, _search_text(summary, args.out))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from host.experiment.config import load_experiment
    from host.experiment.run import resume_experiment, run_experiment, tables_markdown

    if args.seeds is not None and args.seeds < 1:
        raise CliError(f"--seeds {args.seeds}: an experiment needs at least one seed")
    if args.resume:
        flags = {
            "--config": args.config,
            "--preset": args.preset,
            "--store": args.store,
            "--device": args.device,
            "--devices-file": args.devices_file,
            "--token-file": args.token_file,
            "--tls-ca": args.tls_ca,
            "--tls-server-name": args.tls_server_name,
            "--timeout": args.timeout,
            "--lut-version": args.lut_version,
            "--offline": args.offline,
            "--store-token-file": args.store_token_file,
            "--store-tls-ca": args.store_tls_ca,
        }
        given = [flag for flag, value in flags.items() if value]
        if given:
            raise CliError(f"--resume continues with the configs stored in --out: drop {', '.join(given)}")
        results = resume_experiment(args.study, args.out, args.seeds, progress=not args.json)
    else:
        tables = {"device": {**device_table(args), "name": None}, "lut": lut_table(args)}
        experiment = load_experiment(
            args.study, args.preset or "paper", args.config, args.seeds, args.device or (), args.store, tables
        )
        results = run_experiment(experiment, args.out, progress=not args.json)
    from host.runs import to_doc

    emit(to_doc(results), args.json, tables_markdown(results) + f"\nreport in {args.out / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from host.report import build_report
    from host.report.experiment import build_experiment_report

    # An experiment directory holds experiment.json; a search run directory holds config.json.
    path = (build_experiment_report if (args.run / "experiment.json").exists() else build_report)(args.run)
    emit({"report": str(path)}, args.json, f"report written to {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from host.demo import run_demo
    from host.runs import to_doc

    summary = run_demo(args.out, progress=not args.json, resume=args.resume)
    emit(to_doc(summary), args.json, _search_text(summary, args.out))
    return 0


def _add_agent_parsers(sub: Any) -> None:
    agent = sub.add_parser("agent", help="the device agent daemon").add_subparsers(dest="agent_command", required=True)
    serve = agent.add_parser("serve", help="run the agent on this device")
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="address to bind (default 127.0.0.1:50051; port 0 picks one)"
    )
    serve.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    serve.add_argument("--token-file", type=Path, help="require this token from clients")
    serve.add_argument("--tls-cert", type=Path, help="TLS certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback listen address without TLS")
    serve.add_argument("--runtime", help="what runs the models: onnxruntime (default) or openvino")
    serve.add_argument("--execution-provider", choices=("auto", "cpu", "cuda", "tensorrt"), help="onnxruntime's")
    serve.add_argument("--openvino-device", metavar="NAME", help="OpenVINO's device: CPU (default), GPU, NPU ...")
    serve.add_argument(
        "--inference-precision",
        help="OpenVINO's precision hint: default (the device's choice, bf16 on CPUs that have it), f32, bf16, f16",
    )
    serve.add_argument(
        "--latency-statistic",
        help="the latency of record: median (default), or p10 on a CPU shared with other virtual machines",
    )
    serve.add_argument("--threads", type=int, help="intra-op threads (0: physical cores)")
    serve.add_argument("--ready-file", type=Path, help="write the bound HOST:PORT here once serving")
    serve.set_defaults(func=cmd_agent_serve)

    info = agent.add_parser("info", help="the device fingerprint and capabilities")
    add_device_args(info, required=True)
    info.add_argument("--json", action="store_true", help="one JSON document on stdout")
    info.set_defaults(func=cmd_agent_info)

    reprofile = agent.add_parser("reprofile", help="re-profile the device's LUT into a new version now")
    add_device_args(reprofile, required=True)
    reprofile.add_argument("--now", action="store_true", help="run now (for cron or a systemd timer)")
    reprofile.add_argument("--reason", default="manual", help="stored as the new version's note")
    reprofile.add_argument("--json", action="store_true", help="one JSON document on stdout")
    reprofile.set_defaults(func=cmd_agent_reprofile, timeout=3600.0)


def _add_model_parsers(sub: Any) -> None:
    """`bench` and `predict`: one ONNX model on a device."""
    bench = sub.add_parser("bench", help="benchmark an ONNX model on a device")
    bench.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_device_args(bench, required=False)
    bench.add_argument("--batch", type=int, default=0, help="batch size (0: the model's own, else 1)")
    bench.add_argument("--agent-config", type=Path, help="agent TOML config of the embedded agent (no --device)")
    bench.add_argument("--json", action="store_true", help="one JSON document on stdout")
    bench.set_defaults(func=cmd_bench)

    predict = sub.add_parser(
        "predict", help="predicted latency of any ONNX model on a device, per kernel, from the LUT"
    )
    predict.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_device_args(predict, required=False)
    predict.add_argument("--store", help="LUT store URL (default: the SQLite file under $HADMC_HOME)")
    predict.add_argument("--version", type=int, help="pin a LUT version (default: the newest sealed one)")
    predict.add_argument("--force", action="store_true", help="use a pinned version of another fingerprint (warns)")
    predict.add_argument("--batch", type=int, default=1, help="batch size")
    predict.add_argument("--no-profile", action="store_true", help="LUT only: a missing kernel is an error")
    predict.add_argument("--agent-config", type=Path, help="agent TOML config of the embedded agent (no --device)")
    predict.add_argument("--json", action="store_true", help="one JSON document on stdout")
    predict.set_defaults(func=cmd_predict, timeout=120.0)


def _add_compress_parsers(sub: Any) -> None:
    """`compress` and `policy init`: one compression policy."""
    compress = sub.add_parser("compress", help="apply one policy: prune, quantize, distill, export, verify, benchmark")
    compress.add_argument("--config", type=Path, help="TOML config (model, [data], [baseline], [distill], device)")
    compress.add_argument("--policy", type=Path, required=True, help="policy JSON (hadmc policy init writes one)")
    compress.add_argument("--out", type=Path, required=True, help="output directory")
    add_model_args(compress)
    add_device_args(compress, required=False, timeout_s=None)
    compress.add_argument("--store", help="LUT store URL (default: the SQLite file under $HADMC_HOME)")
    add_lut_args(compress)
    compress.add_argument("--json", action="store_true", help="one JSON document on stdout")
    compress.set_defaults(func=cmd_compress)

    policy = sub.add_parser("policy", help="compression policies").add_subparsers(dest="policy_command", required=True)
    init = policy.add_parser("init", help="write a uniform policy for a model")
    init.add_argument(
        "--model", default="resnet18", help="a built-in name, or package.module:factory / file.py:factory"
    )
    init.add_argument("--factory-kwargs", help="the factory's keyword arguments as a JSON object")
    init.add_argument("--classes", type=int, default=6)
    init.add_argument("--input-shape", default="3,64,64", help="without the batch axis, e.g. 3,64,64 or 30")
    init.add_argument("--keep", type=float, default=0.5, help="keep-ratio of every prunable layer")
    init.add_argument("--precision", default="int8", choices=[p.value for p in Precision], help="of every layer")
    init.add_argument("--edge-precision", choices=[p.value for p in Precision], help="of the first and last layer")
    init.add_argument("-o", "--output", type=Path, required=True)
    init.set_defaults(func=cmd_policy_init)


def _add_search_parsers(sub: Any) -> None:
    """`search`, `experiment`, `report` and `demo`: the main job and what comes of it."""
    search = sub.add_parser("search", help="the main job: search per-layer keep-ratios and precisions for a device")
    search.add_argument("--config", type=Path, help="TOML config (model, [data], controllers, episodes, ...)")
    add_device_args(search, required=False, timeout_s=None)
    add_lut_args(search)
    search.add_argument("--store", help="LUT store URL (default: the SQLite file under $HADMC_HOME)")
    search.add_argument("--controllers", help="comma-separated, e.g. ppo,random,uniform")
    search.add_argument("--episodes", type=int, help="episodes per controller")
    search.add_argument(
        "--parallel-episodes", type=int, help="episodes proposed together and scored concurrently ([search])"
    )
    search.add_argument("--backend", choices=["local", "ray"], help="where fine-tunes run ([scale] backend)")
    search.add_argument("--ray-address", help='a Ray cluster to join: "auto" or "ray://host:port" ([scale])')
    search.add_argument("--out", type=Path, required=True, help="run directory")
    add_model_args(search)
    search.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    search.add_argument("--json", action="store_true", help="one JSON document on stdout")
    search.set_defaults(func=cmd_search)
    _add_experiment_parser(sub)

    report = sub.add_parser(
        "report", help="(re)build DIR/report.html and its plots from a search run or experiment directory"
    )
    report.add_argument("run", type=Path, metavar="DIR")
    report.add_argument("--json", action="store_true", help="one JSON document on stdout")
    report.set_defaults(func=cmd_report)

    demo = sub.add_parser("demo", help="the main job on the built-in default, with an embedded agent")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory")
    demo.add_argument("--resume", action="store_true", help="continue a killed demo run in --out")
    demo.add_argument("--json", action="store_true", help="one JSON document on stdout")
    demo.set_defaults(func=cmd_demo)


def _add_experiment_parser(sub: Any) -> None:
    from host.experiment import PRESET_NAMES, STUDIES

    experiment = sub.add_parser("experiment", help="reproduce one of the paper's studies on your device and data")
    experiment.add_argument("study", choices=STUDIES, metavar="NAME", help=f"one of: {', '.join(STUDIES)}")
    experiment.add_argument("--out", type=Path, required=True, help="experiment directory")
    experiment.add_argument(
        "--seeds",
        type=int,
        help="repeat with this many search seeds (mean +- std; default 1); with --resume, add seeds up to this many",
    )
    experiment.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        help="budget and settings to start from (default: paper; tiny: seconds per search)",
    )
    experiment.add_argument(
        "--config", type=Path, help="TOML search config over the preset, with an optional [experiment] table"
    )
    add_device_args(experiment, required=False, many="cross-device: repeat, one per device", timeout_s=None)
    add_lut_args(experiment)
    experiment.add_argument("--store", help="LUT store URL (default: the SQLite file under $HADMC_HOME)")
    experiment.add_argument("--resume", action="store_true", help="continue the experiment in --out")
    experiment.add_argument("--json", action="store_true", help="one JSON document on stdout")
    experiment.set_defaults(func=cmd_experiment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hadmc", description="Hardware-aware model compression.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_agent_parsers(sub)
    _add_model_parsers(sub)
    lut_cli.add_parsers(sub)
    _add_compress_parsers(sub)
    _add_search_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from host import logs

    args = build_parser().parse_args(argv)
    logs.configure(args.verbose + 1 if args.command == "agent" and args.agent_command == "serve" else args.verbose)
    from host.agent_client import AgentError
    from host.latency import LatencyError
    from lut_store.records import StoreError
    from lut_store.tomlfile import ConfigError

    try:
        return args.func(args)
    except (CliError, ConfigError, AgentError, StoreError, LatencyError, OSError, ValueError) as exc:
        print(f"hadmc: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
