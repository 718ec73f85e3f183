from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "evalsite.runs"
    label = "runs"

    def ready(self) -> None:
        # Tasks import models and services, which only exist once the app registry is ready.
        from evalsite.jobs.models import Job
        from evalsite.jobs.registry import job_kind_register
        from evalsite.runs.tasks import evalset_import_task, generation_run_task

        job_kind_register(kind=Job.Kind.IMPORT_EVALSET, task=evalset_import_task, queue="cpu")
        job_kind_register(kind=Job.Kind.GENERATION, task=generation_run_task, queue="gpu")
