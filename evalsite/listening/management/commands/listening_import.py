from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from evalsite.listening.models import ListeningTest
from evalsite.listening.services.imports import (
    DEFAULT_CMOS_COMPARISON,
    ImportRejected,
    checkpoint_mapping_parse,
    listening_test_import,
)


class Command(BaseCommand):
    help = (
        "Import the ratings of a listening test run elsewhere (long CSV or webMUSHRA mushra.csv) as an external "
        "test; every bad row is listed and nothing is imported when there is one (docs/guide/importing-tests.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="the CSV file")
        parser.add_argument("--name", required=True, help="name of the new test (unique)")
        parser.add_argument("--kind", required=True, choices=ListeningTest.Kind.values)
        parser.add_argument(
            "--format",
            default=ListeningTest.Origin.LONG_CSV,
            choices=[ListeningTest.Origin.LONG_CSV, ListeningTest.Origin.WEBMUSHRA],
        )
        parser.add_argument("--owner", required=True, help="username of the researcher who owns the test")
        parser.add_argument(
            "--checkpoints", metavar="FILE", help="lines 'system = run@step' linking systems to checkpoints"
        )
        parser.add_argument("--eval-set", default="", help="link items to this eval set's items by key")
        parser.add_argument(
            "--comparison", default=DEFAULT_CMOS_COMPARISON, help="CMOS: the name of the comparison system"
        )

    def handle(self, *args, **options):
        owner = get_user_model().objects.filter(username=options["owner"]).first()
        if owner is None:
            raise CommandError(f"--owner: no user {options['owner']!r}")
        path = Path(options["path"])
        if not path.is_file():
            raise CommandError(f"{path}: not a file")
        mapping, problems = {}, []
        if options["checkpoints"]:
            mapping, problems = checkpoint_mapping_parse(Path(options["checkpoints"]).read_text())
        if problems:
            raise CommandError("\n".join(problems))
        try:
            test = listening_test_import(
                owner=owner,
                name=options["name"],
                kind=options["kind"],
                fmt=options["format"],
                data=path.read_bytes(),
                file_name=path.name,
                checkpoints=mapping,
                eval_set=options["eval_set"],
                comparison=options["comparison"],
            )
        except ImportRejected as exc:
            more = exc.extra["error_count"] - exc.extra["errors_shown"]
            tail = [f"... and {more} more"] if more else []
            raise CommandError("\n".join([exc.message, *exc.extra["errors"], *tail])) from None
        summary = test.import_summary
        self.stdout.write(
            f"imported listening test {test.pk} {test.name!r}: {summary['rows']} ratings, "
            f"{test.participants.count()} listeners, {test.conditions.count()} conditions"
        )
