"""`pitfalls run | report | probe`: parse arguments and the study once, then hand over."""

from __future__ import annotations

import argparse
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

    try:
        outcome = run_study(spec, Path(args.storage) / spec.name, tracking_uri=args.mlflow_uri,
                            address=args.address)
    except StudySetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if outcome.table_markdown:
        print()
        print(outcome.table_markdown)
        print(f"results: {outcome.study_dir / 'results.parquet'}")
        print(f"table:   {outcome.study_dir / 'comparison.md'}")
    if outcome.failed or outcome.unfinished:
        print(f"{outcome.failed} trial(s) failed, {outcome.unfinished} unfinished, "
              f"{outcome.completed} completed (errors are in results.parquet and MLflow)",
              file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from pitfalls.results.report import comparison_data, load_resolved_study, write_comparison

    study_dir = Path(args.study_dir)
    if not (study_dir / "study.yaml").is_file() or not (study_dir / "results.parquet").is_file():
        print(f"error: {study_dir} is not a study directory (needs study.yaml and results.parquet)",
              file=sys.stderr)
        return 2
    spec = load_resolved_study(study_dir)
    if args.format == "json":
        import json

        print(json.dumps(comparison_data(study_dir, spec), indent=2, default=str))
        return 0
    if args.format == "csv":
        import sys as _sys

        import pyarrow as pa
        import pyarrow.csv

        rows = comparison_data(study_dir, spec)["combinations"]
        buf = pa.BufferOutputStream()
        pyarrow.csv.write_csv(pa.Table.from_pylist(rows), buf)
        _sys.stdout.write(buf.getvalue().to_pybytes().decode())
        return 0
    text, path = write_comparison(study_dir, spec)
    print(text)
    print(f"table: {path}")
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
              f"seq_len={args.seq_len} (random init, synthetic frames, probed in train mode)")
        print(probe_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pitfalls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study (a YAML file) as a Ray Tune sweep")
    run.add_argument("study", help="study file, e.g. studies/quickstart.yaml")
    run.add_argument("--storage", default="runs",
                     help="directory holding study directories (default: ./runs); on a cluster, "
                          "a path every node sees")
    run.add_argument("--mlflow-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a sqlite file "
                          "in the study directory)")
    run.add_argument("--address", default=None,
                     help="Ray cluster to join ('auto', 'ray://host:10001'); default: start a local Ray")
    run.add_argument("--name", default=None, help="study name (default: the study file's name)")
    run.set_defaults(func=_run)
    report = sub.add_parser("report", help="rebuild the comparison table of a study directory")
    report.add_argument("study_dir")
    report.add_argument("--format", choices=("md", "json", "csv"), default="md",
                        help="md: print and write comparison.md (default); json: every number, "
                             "machine-readable; csv: the per-combination table")
    report.set_defaults(func=_report)
    from pitfalls.probes.cli import add_arguments

    probe = sub.add_parser("probe", help="probe a model for BN pitfalls (leakage, batch dependence, "
                                         "train/eval gap, stale statistics)")
    add_arguments(probe)
    probe.set_defaults(func=_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
