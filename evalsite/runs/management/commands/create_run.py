from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from evalsite.runs.models import EvalSet, Run
from evalsite.runs.services import run_create


class Command(BaseCommand):
    help = "Create a run evaluated on an eval set; prints its API token once."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=Run.Kind.values)
        parser.add_argument(
            "--family",
            default="auto",
            help="hifigan, evagan, sat, aar, an installed entry point, a pkg.mod:factory listed "
            "in EVALSITE_MODEL_PLUGINS, or auto",
        )
        parser.add_argument("--eval-set", required=True, help="name of an imported eval set")
        parser.add_argument(
            "--metrics", nargs="*", default=None, help="metric names (default: the kind's defaults)"
        )
        parser.add_argument(
            "--class-names", nargs="*", default=None, help="class-conditional generator labels, in id order"
        )

    def handle(self, *args, **opts):
        eval_set = EvalSet.objects.filter(name=opts["eval_set"]).first()
        if eval_set is None:
            raise CommandError(
                f"no eval set named {opts['eval_set']!r}; import one with manage.py import_evalset"
            )
        config = {}
        if opts["metrics"] is not None:
            config["metrics"] = opts["metrics"]
        if opts["class_names"]:
            config["class_names"] = opts["class_names"]
        try:
            run, token = run_create(
                name=opts["name"],
                kind=opts["kind"],
                model_family=opts["family"],
                eval_set=eval_set,
                config=config,
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        self.stdout.write(f"run {run.name!r} (id {run.pk}) created; API token (shown once): {token}")
