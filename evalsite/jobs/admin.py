from django.contrib import admin

from evalsite.jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "progress", "attempts", "worker", "created_at", "finished_at"]
    list_filter = ["kind", "status"]
    search_fields = ["id", "error", "worker", "run__name", "eval_set__name", "progress_message"]
    readonly_fields = ["started_at", "heartbeat_at", "finished_at", "attempts", "worker"]
    raw_id_fields = ["run", "checkpoint", "eval_set"]
