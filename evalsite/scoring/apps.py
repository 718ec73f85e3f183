from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "evalsite.scoring"
    label = "scoring"

    def ready(self) -> None:
        # Tasks import models and services, which only exist once the app registry is ready.
        from evalsite.jobs.models import Job
        from evalsite.jobs.registry import job_kind_register
        from evalsite.scoring.tasks import detection_run_task, metrics_run_task

        job_kind_register(kind=Job.Kind.METRICS, task=metrics_run_task, queue="cpu")
        job_kind_register(kind=Job.Kind.DETECTION, task=detection_run_task, queue="cpu")
