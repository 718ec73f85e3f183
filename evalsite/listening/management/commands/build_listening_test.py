import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from evalsite.core.exceptions import ApplicationError
from evalsite.listening.models import LOUDNESS_TARGET_MAX_LUFS, LOUDNESS_TARGET_MIN_LUFS, ListeningTest
from evalsite.listening.services.build import DesignWarningsUnconfirmed, listening_test_create
from evalsite.listening.services.design import DEFAULT_LOUDNESS_TARGET_LUFS, TestDesign
from evalsite.runs.models import Checkpoint


class Command(BaseCommand):
    help = "Build a listening test from checkpoints (RUN@STEP ...) on their eval set; prints the invite link."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=ListeningTest.Kind.values)
        parser.add_argument("--checkpoints", nargs="+", required=True, metavar="RUN@STEP")
        parser.add_argument(
            "--comparison",
            default=None,
            metavar="RUN@STEP",
            help="CMOS: rate every checkpoint against this one (default: the reference recording)",
        )
        parser.add_argument(
            "--allow-no-preference", action="store_true", help="AB: offer a 'no preference' answer"
        )
        parser.add_argument(
            "--require-play-all",
            action="store_true",
            help="listeners must play every sound (and the reference) before continuing",
        )
        parser.add_argument(
            "--headphone-check",
            action="store_true",
            help="level calibration and antiphase headphone screening (Woods et al. 2017) before the first trial",
        )
        parser.add_argument(
            "--gold-items", type=int, default=0, help="gold trials to build (every kind); one per listener"
        )
        parser.add_argument(
            "--trapping-items",
            type=int,
            default=0,
            help="trapping (attention-check) trials to build (every kind); one per listener",
        )
        parser.add_argument(
            "--loudness-target",
            type=float,
            default=DEFAULT_LOUDNESS_TARGET_LUFS,
            metavar="LUFS",
            help=f"serve every sound at this BS.1770 loudness ({LOUDNESS_TARGET_MIN_LUFS:g} to "
            f"{LOUDNESS_TARGET_MAX_LUFS:g}; default %(default)s)",
        )
        parser.add_argument(
            "--no-loudness-alignment",
            action="store_true",
            help="serve the sounds as generated (e.g. for a loudness study)",
        )
        parser.add_argument(
            "--questionnaire",
            default=None,
            metavar="JSON_FILE",
            help='pre-test / post-test questions, a JSON file as the API takes it: {"pre": [...], "post": [...]}',
        )
        parser.add_argument("--training-items", type=int, default=1)
        parser.add_argument("--votes", type=int, default=10, help="valid votes wanted per trial")
        parser.add_argument(
            "--min-listeners",
            type=int,
            default=20,
            help="listeners wanted after post-screening (BS.1534-3: at least 20); the analysis warns below it",
        )
        parser.add_argument("--trials-per-listener", type=int, default=None)
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--completion-code", default="")
        parser.add_argument("--completion-redirect", default="")
        parser.add_argument("--publish", action="store_true")
        parser.add_argument(
            "--confirm",
            action="store_true",
            help="with --publish: publish even when the build gives design warnings (they are printed)",
        )
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @staticmethod
    def checkpoint(spec: str) -> Checkpoint:
        run, _, step = spec.rpartition("@")
        found = Checkpoint.objects.filter(run__name=run, step=int(step) if step.isdigit() else -1).first()
        if found is None:
            raise CommandError(f"no checkpoint {spec!r} (expected RUN@STEP of a registered checkpoint)")
        return found

    @staticmethod
    def questionnaire(path: str) -> dict:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"--questionnaire {path}: not a readable JSON file ({exc})") from None

    def handle(self, *args, **opts):
        checkpoints = [self.checkpoint(spec) for spec in opts["checkpoints"]]
        comparison = self.checkpoint(opts["comparison"]) if opts["comparison"] else None
        questionnaire = self.questionnaire(opts["questionnaire"]) if opts["questionnaire"] else None
        try:
            design = TestDesign(
                name=opts["name"],
                kind=opts["kind"],
                checkpoints=checkpoints,
                training_items=opts["training_items"],
                votes_target=opts["votes"],
                min_listeners=opts["min_listeners"],
                trials_per_participant=opts["trials_per_listener"],
                seed=opts["seed"],
                completion_code=opts["completion_code"],
                completion_redirect=opts["completion_redirect"],
                comparison=comparison,
                allow_no_preference=opts["allow_no_preference"],
                require_play_all=opts["require_play_all"],
                headphone_check=opts["headphone_check"],
                gold_items=opts["gold_items"],
                trapping_items=opts["trapping_items"],
                loudness_target_lufs=None if opts["no_loudness_alignment"] else opts["loudness_target"],
                questionnaire=questionnaire,
            )
            # One transaction: a refused publish keeps nothing, so the same command with --confirm can follow.
            test = listening_test_create(design=design, publish=opts["publish"], confirm=opts["confirm"])
        except DesignWarningsUnconfirmed as exc:
            for warning in exc.extra["design_warnings"]:
                self.stderr.write(f"design warning: {_line(warning)}")
            raise CommandError(
                f"not built: {len(exc.extra['design_warnings'])} design warning(s) above; fix the design, or "
                f"add --confirm to publish anyway"
            ) from None
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        for warning in test.design_warnings:
            self.stderr.write(f"design warning: {_line(warning)}")
        for warning in test.build_warnings:
            self.stderr.write(f"warning: {warning}")
        if test.loudness_served_lufs is not None:
            self.stdout.write(f"loudness aligned to {test.loudness_served_lufs:.1f} LUFS")
        else:
            self.stdout.write("loudness not aligned (served as generated)")
        url = opts["base_url"].rstrip("/") + reverse("listening:invite", args=[test.invite_token])
        self.stdout.write(
            f"{test.kind} test {test.name!r}: {test.trials.count()} trials, status {test.status}"
        )
        self.stdout.write(f"invite link: {url}")


def _line(warning: dict) -> str:
    """A design warning on one line: its message, then the items it is about."""
    items = warning["items"]
    return warning["message"] + (f" (items: {', '.join(items)})" if items else "")
