import os

from django.core.management.base import BaseCommand, CommandError

from evalsite.core.exceptions import ApplicationError
from evalsite.runs.models import Run
from evalsite.runs.services import checkpoint_register


class Command(BaseCommand):
    help = "Register a checkpoint of a run; it is generated and scored by the workers."

    def add_arguments(self, parser):
        parser.add_argument("run", help="run name")
        parser.add_argument("step", type=int)
        parser.add_argument(
            "path", help="checkpoint file under EVALSITE_CHECKPOINT_ROOTS (readable by the gpu workers)"
        )
        parser.add_argument("--sha256", default="")
        parser.add_argument("--no-evaluate", action="store_true", help="register only")

    def handle(self, *args, **opts):
        run = Run.objects.filter(name=opts["run"]).first()
        if run is None:
            raise CommandError(f"no run named {opts['run']!r}")
        try:
            checkpoint, created = checkpoint_register(
                run=run,
                step=opts["step"],
                uri=os.path.abspath(opts["path"]),
                sha256=opts["sha256"],
                evaluate=not opts["no_evaluate"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        if not created:
            self.stdout.write(
                f"step {checkpoint.step} of {run.name!r} was already registered (status {checkpoint.status})"
            )
            return
        job = checkpoint.jobs.filter(kind="generation").first()
        queued = f"; generation job {job.pk} queued" if job else ""
        self.stdout.write(f"checkpoint {run.name}@{checkpoint.step} registered{queued}")
