from django.core.management.base import BaseCommand

from evalsite.jobs.services import job_fail_stale


class Command(BaseCommand):
    help = "Mark running jobs whose heartbeat stopped as failed (health check)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--stale-after", type=float, default=None, help="seconds (default: EVALSITE_JOB_STALE_AFTER_S)"
        )

    def handle(self, *args, **opts):
        ids = job_fail_stale(stale_after_s=opts["stale_after"])
        self.stdout.write(f"marked {len(ids)} stale job(s) failed: {ids}")
