from django.apps import AppConfig


class PipelineConfig(AppConfig):
    name = "evalsite.pipeline"
    label = "pipeline"

    def ready(self) -> None:
        # The stages import the models of every app they sequence, which exist only once the registry is ready.
        from evalsite.jobs.registry import job_listener_add
        from evalsite.pipeline.stages import CHECKPOINT_PIPELINE

        job_listener_add(CHECKPOINT_PIPELINE)
