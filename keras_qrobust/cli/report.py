"""``keras-qrobust report``: re-render a report.json as Markdown, HTML and plots."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .outputs import new_folder, save_report

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    r = commands.add_parser("report", help="re-render a report.json as Markdown, HTML and plots",
                            description="Validate a report.json against the schema, print its Markdown, and with "
                            "--out write report.{html,md,json} and plots/ there.")
    r.add_argument("report", help="a report.json written by guard or evaluate")
    r.add_argument("--out", help="a new (or empty) folder for the re-rendered report")
    r.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing the report files")


def run(args) -> int:
    from ..report import RobustnessReport

    path = Path(args.report)
    try:
        report = RobustnessReport.load(path)
    except FileNotFoundError:
        raise UsageError(f"{args.report} does not exist; pass the report.json a guard or evaluate run wrote") from None
    except (ValueError, KeyError, TypeError) as error:  # JSON syntax or schema
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{args.report} is not a keras_qrobust report.json ({first}); pass the report.json a guard "
                         "or evaluate run wrote") from None
    folder = new_folder(args.out, args.overwrite) if args.out else None
    print(report.to_markdown())
    if folder is not None:
        save_report(report, folder, args.overwrite)
    return 0
