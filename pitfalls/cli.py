"""`pitfalls run | resume | validate | plan | report | evaluate | ui | probe | data | reproduce |
pretrain-standin`: parse arguments and the study once, then hand over."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pitfalls.config import StudyError, load_study, name_problem

    try:
        spec = load_study(args.study)
        if args.name is not None:
            if name_problem(args.name):
                raise StudyError("--name", [f"--name: {args.name!r} {name_problem(args.name)}"])
            spec = replace(spec, name=args.name)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pitfalls.sweep.driver import StudySetupError, run_study
    from pitfalls.sweep.storage import StorageError, study_storage

    try:
        outcome = run_study(spec, study_storage(args.storage, spec.name), tracking_uri=args.mlflow_uri,
                            address=args.address, optuna_storage=args.optuna_storage,
                            force=args.force)
    except (StudySetupError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _finish(outcome)


def _resume(args: argparse.Namespace) -> int:
    from pitfalls.sweep.driver import StudySetupError, resume_study

    try:
        outcome = resume_study(args.study_dir, tracking_uri=args.mlflow_uri,
                               address=args.address, optuna_storage=args.optuna_storage,
                               force=args.force)
    except StudySetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _finish(outcome)


FORCE_HELP = ("take over the study's driver lock from a driver that is gone (its machine lost, "
              "its lease not expired yet); never while that driver runs")


def _finish(outcome) -> int:
    if outcome.table_markdown:
        print()
        print(outcome.table_markdown)
        print(f"results: {outcome.study_dir / 'results.parquet'}")
        print(f"table:   {outcome.study_dir / 'comparison.md'}")
        print(f"report:  {outcome.study_dir / 'report.html'}")
        if outcome.location and outcome.location != str(outcome.study_dir):
            print(f"stored:  {outcome.location} (the files above are its working copy)")
    from pitfalls.sweep.ui import server_links

    if links := server_links(outcome.study_dir):  # None for a local store or an unreachable server
        print(f"mlflow:  {links['runs']}")
        print(f"compare: {links['compare']}")
    if outcome.failed or outcome.unfinished:
        print(f"{outcome.failed} trial(s) failed, {outcome.unfinished} unfinished, "
              f"{outcome.completed} completed (errors are in results.parquet and MLflow); "
              f"continue with `pitfalls resume {outcome.location or outcome.study_dir}`",
              file=sys.stderr)
        return 1
    return 0


def _report_source(args: argparse.Namespace):
    """(results table, Analysis, study dir or None) from whichever source was named."""
    from pitfalls.results.analysis import analysis_of_study, infer_analysis, load_resolved_study
    from pitfalls.results.store import RESULTS_FILE, has_results, read_results, read_study_results

    if args.mlflow_experiment:
        from pitfalls.results.mlflow_source import results_from_mlflow

        results = results_from_mlflow(args.mlflow_experiment, args.mlflow_uri, args.study_id)
        return results, infer_analysis(results, args.mlflow_experiment, args.metric, args.mode), None
    if args.study_id:
        raise ValueError("--study-id picks a study of --mlflow-experiment; a study directory or "
                         "results file holds one study")
    from pitfalls.sweep.storage import existing_study_storage, is_remote

    if is_remote(args.source):
        storage = existing_study_storage(args.source)
        storage.pull()
        args.source = str(storage.local)
    source = Path(args.source)
    if source.is_file() and source.suffix == ".parquet":
        results = read_results(source)
        return results, infer_analysis(results, source.stem, args.metric, args.mode), None
    if (source / "study.yaml").is_file() and has_results(source):
        from dataclasses import replace

        from pitfalls.results.phases import PREDICTIONS_DIR

        analysis = replace(analysis_of_study(load_resolved_study(source)), predictions=source / PREDICTIONS_DIR)
        return read_study_results(source), analysis, source
    raise ValueError(f"{source} is neither a study directory (study.yaml + {RESULTS_FILE}) "
                     "nor a .parquet results file")


def _report(args: argparse.Namespace) -> int:
    import json

    from pitfalls.fileio import atomic_write
    from pitfalls.results.analysis import combinations_table, comparison_data
    from pitfalls.results.render_md import comparison_markdown
    from pitfalls.results.write import COMPARISON_FILE, REPORT_FILE

    if not args.source and not args.mlflow_experiment:
        print("error: name a study directory, a results .parquet file, or --mlflow-experiment",
              file=sys.stderr)
        return 2
    try:
        results, analysis, study_dir = _report_source(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(comparison_data(results, analysis), indent=2, default=str))
    elif args.format == "csv":
        import pyarrow as pa
        import pyarrow.csv

        buf = pa.BufferOutputStream()
        pyarrow.csv.write_csv(combinations_table(results, analysis), buf)
        sys.stdout.write(buf.getvalue().to_pybytes().decode())
    elif args.format == "html":
        from pitfalls.results.render_html import render_html

        path = (study_dir / REPORT_FILE) if study_dir else Path(f"{analysis.name}-{REPORT_FILE}")
        atomic_write(path, render_html(results, analysis))
        print(f"report: {path}")
    else:
        text = comparison_markdown(results, analysis)
        print(text)
        if study_dir is not None:
            atomic_write(study_dir / COMPARISON_FILE, text)
            print(f"table: {study_dir / COMPARISON_FILE}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pitfalls.config import StudyError, load_study

    try:  # the cost needs neither the data nor the pretrained weights on this machine
        spec = load_study(args.study, check_data=False, check_weights=False)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from pitfalls.plan import plan_study, render

    device = torch.device(args.device) if args.device else None
    print(render(plan_study(spec, device, args.gpu_memory)))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pitfalls.config import StudyError, load_study

    try:
        spec = load_study(args.study, check_data=not args.skip_data,
                          check_weights=not args.skip_weights)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = [what for what, skip in (("the data", args.skip_data),
                                       ("the pretrained weights' availability", args.skip_weights)) if skip]
    print(f"{args.study}: valid, {spec.num_trials} trial(s)"
          + (f" (not checked: {' and '.join(skipped)})" if skipped else ""))
    return 0


STANDIN_NOTE = ("SYNTHETIC STAND-IN weights, not ImageNet ones: the backbone is trained to classify "
                "single frames of synthetic videos, so that `model.pretrained: true` runs offline "
                "(e.g. on a CPU); results with them say nothing about the published numbers")


def _pretrain_standin(args: argparse.Namespace) -> int:
    from pitfalls.models.backbone import backbone_info

    info = backbone_info(args.backbone)
    if info.error or info.source is None:
        why = info.error or "has no pretrained weights in timm to stand in for"
        print(f"error: {args.backbone!r} {why}", file=sys.stderr)
        return 2
    from pitfalls.data.synthetic import SyntheticOptions
    from pitfalls.repro_pretrain import pretrain_standin

    hf_home = Path(args.hf_home).resolve()
    print(f"{info.source.name}: {STANDIN_NOTE}; {args.steps} steps at {args.frame_size}x"
          f"{args.frame_size} px, inputs normalized with the tag's mean/std")
    path = pretrain_standin(info.source.name, hf_home, SyntheticOptions(frame_size=args.frame_size),
                            steps=args.steps, seed=args.seed)
    print(f"written: {path} (synthetic stand-in, not ImageNet weights)")
    print(f"use it: HF_HOME={hf_home} HF_HUB_OFFLINE=1 uv run pitfalls run STUDY   "
          f"(model.pretrained: true, backbone {info.source.name}; HF_HUB_CACHE, if set, must "
          f"point at {hf_home / 'hub'})")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pitfalls.repro import render, reproduce
    from pitfalls.sweep.driver import StudySetupError

    try:
        rep = reproduce(Path(args.out), address=args.address, tracking_uri=args.mlflow_uri,
                        seeds=args.seeds, steps_per_epoch=args.steps_per_epoch, quick=args.quick,
                        pretrain_steps=args.pretrain_steps)
    except (StudySetupError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print(render(rep))
    print(f"written: {Path(args.out) / 'reproduction.md'} and reproduction.json")
    return 0


def _reproduce_compare(args: argparse.Namespace) -> int:
    from pitfalls.repro_sides import read_run, render_sides

    labels = args.labels or [Path(d).name for d in args.runs]
    if len(labels) != len(args.runs):
        print(f"error: --labels: {len(labels)} labels for {len(args.runs)} runs", file=sys.stderr)
        return 2
    try:
        runs = [read_run(Path(d), label, args.seeds) for d, label in zip(args.runs, labels)]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render_sides(runs))
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from pitfalls.config import StudyError
    from pitfalls.probes.cli import run
    from pitfalls.probes.summary import probe_table

    try:
        results = run(args)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{args.backbone} norm={args.norm} frozen_stages={args.frozen_stages} "
              f"seq_len={args.seq_len} ({'pretrained' if args.pretrained else 'random init'}, "
              "synthetic frames, probed in train mode)")
        print(probe_table(results))
    return 0


def _ui(args: argparse.Namespace) -> int:
    from pitfalls.sweep.ui import serve

    return serve(Path(args.study_dir), args.port, sys.stdout)


def _evaluate(args: argparse.Namespace) -> int:
    from pitfalls.data.cholec80 import PHASES
    from pitfalls.scoring.cli import run

    return run(args, PHASES)


def build_parser() -> argparse.ArgumentParser:
    from pitfalls.config.metrics import STUDY_METRICS as METRICS

    parser = argparse.ArgumentParser(prog="pitfalls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study (a YAML file) as a Ray Tune sweep")
    run.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    run.add_argument("--storage", default="runs",
                     help="where studies live (default: ./runs): a directory (on a cluster, one "
                          "every node sees, e.g. NFS) or S3-compatible object storage, "
                          "s3://BUCKET/PREFIX[?endpoint_override=HOST:PORT&scheme=http]")
    run.add_argument("--mlflow-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a sqlite file "
                          "in the study directory)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray")
    run.add_argument("--optuna-storage", default=None,
                     help="Optuna storage URL for optuna studies, e.g. postgresql+psycopg2://... "
                          "(default: $PITFALLS_OPTUNA_STORAGE, else optuna.db in the study directory)")
    run.add_argument("--name", default=None, help="study name (default: the study file's name)")
    run.add_argument("--force", action="store_true", help=FORCE_HELP)
    run.set_defaults(func=_run)
    resume = sub.add_parser("resume", help="continue an interrupted study: finished trials are "
                                           "kept, the others continue from their checkpoints")
    resume.add_argument("study_dir", help="the study directory (e.g. runs/quickstart) or, for a "
                                          "study on object storage, its URI (s3://BUCKET/PREFIX/NAME"
                                          "?...) or local working copy")
    resume.add_argument("--mlflow-uri", default=None,
                        help="MLflow tracking URI (default: the one the study started with)")
    resume.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    resume.add_argument("--optuna-storage", default=None,
                        help="Optuna storage URL, when the study started with one")
    resume.add_argument("--force", action="store_true", help=FORCE_HELP)
    resume.set_defaults(func=_resume)
    validate = sub.add_parser("validate", help="validate a study as `pitfalls run` does, and "
                                               "start nothing")
    validate.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    validate.add_argument("--skip-data", action="store_true",
                          help="do not read the dataset (its data lives on another machine)")
    validate.add_argument("--skip-weights", action="store_true",
                          help="do not check that the pretrained weights (model.pretrained) can be "
                               "had here: in the Hugging Face cache or from the Hub (they are "
                               "needed where the study runs)")
    validate.set_defaults(func=_validate)
    plan = sub.add_parser("plan", help="what a study will cost and whether each configuration fits, "
                                       "measured with a few steps per model shape (no Ray)")
    plan.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    plan.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                      help="memory per GPU to plan for (default: this GPU's, else 80)")
    plan.add_argument("--device", default=None, help="measure on this device (default: cuda if "
                                                     "present, else cpu)")
    plan.set_defaults(func=_plan)
    report = sub.add_parser("report", help="comparison tables of a study (its directory, a results "
                                           ".parquet file, or its MLflow experiment)")
    report.add_argument("source", nargs="?", help="study directory, a study's s3:// URI, or a "
                                                  "results .parquet file")
    report.add_argument("--mlflow-experiment", help="read the trials from this MLflow experiment")
    report.add_argument("--mlflow-uri", default=None, help="tracking URI for --mlflow-experiment "
                                                           "(default: $MLFLOW_TRACKING_URI)")
    report.add_argument("--study-id", default=None,
                        help="with --mlflow-experiment: the study to read, when the experiment "
                             "holds several (runs of studies with the same name)")
    report.add_argument("--metric", default="val_accuracy", choices=METRICS,
                        help="without a study file (default val_accuracy)")
    report.add_argument("--mode", default="max", choices=("max", "min"))
    report.add_argument("--format", choices=("md", "html", "json", "csv"), default="md",
                        help="md: print (and write comparison.md of a study dir; default); html: "
                             "a self-contained report with figures (report.html in the study dir, "
                             "else ./NAME-report.html); json: every number; csv: the table")
    report.set_defaults(func=_report)
    repro = sub.add_parser("reproduce", help="the papers' findings F1-F4 on synthetic video: three "
                                             "small studies, seeds from a power analysis, and a "
                                             "significance test per finding (docs/reproduction.md)")
    repro.add_argument("--out", default="runs/reproduction",
                       help="where the studies and reproduction.md go (default: runs/reproduction); "
                            "run again with the same --out to continue an interrupted run")
    repro.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: a sqlite "
                                                          "file per study)")
    repro.add_argument("--address", default=None, help="Ray cluster to join (default: local Ray)")
    repro.add_argument("--quick", action="store_true",
                       help="10 seeds per study instead of the power analysis's (F3/F4 then have "
                            "little power: the report gives each comparison's)")
    repro.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="these seeds in every study (fewer seeds: weaker tests)")
    repro.add_argument("--pretrain-steps", type=int, default=None,
                       help="stand-in pretraining steps instead of 1000 (a smoke run)")
    repro.add_argument("--steps-per-epoch", type=int, default=None,
                       help="training steps per epoch instead of the studies' 150 (a smoke run)")
    repro.set_defaults(func=_reproduce)
    sides = sub.add_parser("reproduce-compare",
                           help="runs of `pitfalls reproduce` (e.g. on two machines) side by side: "
                                "a finding is reproduced only when it holds in every run")
    sides.add_argument("runs", nargs="+", metavar="OUT", help="the --out directories of finished runs")
    sides.add_argument("--labels", nargs="+", default=None, help="a name per run (default: the "
                                                                 "directory names)")
    sides.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="compare at every study's first N seeds (a --quick run has 10)")
    sides.set_defaults(func=_reproduce_compare)
    standin = sub.add_parser(
        "pretrain-standin", help="synthetic stand-in weights (NOT ImageNet ones) for a timm "
                                 "pretrained tag, written into a local Hugging Face cache, so "
                                 "model.pretrained: true runs offline",
        description=f"Pretrain {STANDIN_NOTE}. The weights go where timm looks for the tag's "
                    "weights in a Hugging Face cache at --hf-home; run studies with HF_HOME set "
                    "to it (and HF_HUB_OFFLINE=1).")
    standin.add_argument("backbone", metavar="BACKBONE.TAG", help="a timm model with a pretrained "
                         "tag, e.g. test_resnet.r160_in1k (no tag: timm's default)")
    standin.add_argument("--hf-home", required=True, metavar="DIR",
                         help="the Hugging Face home to write into (HF_HOME; weights in DIR/hub)")
    standin.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    standin.add_argument("--frame-size", type=int, default=32,
                         help="synthetic frame size in pixels (default 32; the study's)")
    standin.add_argument("--seed", type=int, default=0)
    standin.set_defaults(func=_pretrain_standin)
    from pitfalls.probes.cli import add_arguments

    probe = sub.add_parser("probe", help="probe a model for BN pitfalls (leakage, batch dependence, "
                                         "train/eval gap, stale statistics)")
    add_arguments(probe)
    probe.set_defaults(func=_probe)
    from pitfalls.data.cli import add_arguments as add_data_arguments
    from pitfalls.data.cli import run as run_data
    from pitfalls.scoring.cli import add_arguments as add_evaluate_arguments

    evaluate = sub.add_parser("evaluate", help="score phase prediction files against ground truth "
                                               "with the Cholec80 community's protocol")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)
    ui = sub.add_parser("ui", help="browse a study in the MLflow UI: its runs and the compare view "
                                   "of its trials (a local store is served on 127.0.0.1 until Ctrl-C)")
    ui.add_argument("study_dir", metavar="STUDY", help="the study directory, e.g. runs/quickstart")
    ui.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    ui.set_defaults(func=_ui)
    data = sub.add_parser("data", help="check a dataset folder, or pack it into a frame store")
    add_data_arguments(data)
    data.set_defaults(func=run_data)
    return parser


def _move_credentials(args: argparse.Namespace) -> int | None:
    """Credentials in --mlflow-uri / --optuna-storage (else $MLFLOW_TRACKING_URI /
    $PITFALLS_OPTUNA_STORAGE) to the environment, before anything can store or print them
    (`pitfalls.sweep.credentials`); 2 when one cannot move."""
    from pitfalls.sweep import credentials

    try:
        for option, env in (("mlflow_uri", credentials.TRACKING_URI_ENV),
                            ("optuna_storage", credentials.OPTUNA_STORAGE_ENV)):
            if hasattr(args, option):
                if getattr(args, option) is None:
                    credentials.move_env_credentials(env)
                setattr(args, option, credentials.move_credentials(getattr(args, option)))
    except credentials.CredentialsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None


# Hugging Face cache locations a user may give relative to where they run the command; trials
# run in other working directories (Tune's trial directories), so they are made absolute once.
HF_PATH_VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def absolute_cache_paths(environ=os.environ) -> None:
    """Relative Hugging Face cache paths -> absolute, before anything reads them (validation,
    the trials: local Ray workers inherit this process's environment)."""
    for name in HF_PATH_VARIABLES:
        if environ.get(name) and not os.path.isabs(environ[name]):
            environ[name] = os.path.abspath(environ[name])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    absolute_cache_paths()
    if (rc := _move_credentials(args)) is not None:
        return rc
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside Tune's own handling (e.g. Ray starting)
        print("interrupted; a study stopped this way continues with `pitfalls resume DIR`",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
