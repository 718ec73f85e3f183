import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from evalsite.core.exceptions import ApplicationError
from evalsite.runs.evalset_services import evalset_import


class Command(BaseCommand):
    help = "Import a directory of audio files or a CSV/JSONL manifest (path,text,speaker,...) as an eval set."

    def add_arguments(self, parser):
        parser.add_argument(
            "source", help="directory of .wav/.flac/.ogg/.mp3 files, or a .csv/.jsonl manifest"
        )
        parser.add_argument("--name", required=True, help="eval set name (created if it does not exist)")
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--strict", action="store_true", help="exit with status 1 if any file was rejected"
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **opts):
        bar = None

        def progress(done: int, total: int, key: str) -> None:
            nonlocal bar
            if opts["no_progress"]:
                return
            if bar is None:
                bar = tqdm(total=total, unit="file", file=sys.stderr, desc=opts["name"])
            bar.update(1)

        try:
            report = evalset_import(
                name=opts["name"], source=opts["source"], description=opts["description"], progress=progress
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        finally:
            if bar is not None:
                bar.close()
        for err in report.errors:
            self.stderr.write(f"rejected [{err.reason}] {err.message}")
        self.stdout.write(
            f"eval set {opts['name']!r} (id {report.eval_set_id}): {report.created} created, {report.updated} updated, "
            f"{report.unchanged} unchanged, {len(report.errors)} rejected of {report.total}"
        )
        imported = report.created + report.updated + report.unchanged
        if report.total and not imported:
            raise CommandError("no file could be imported")
        if opts["strict"] and report.errors:
            raise CommandError(f"{len(report.errors)} file(s) rejected (--strict)")
