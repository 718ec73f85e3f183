# The Job model moved from runs to jobs; its table (runs_job) and rows stay where they are, so this
# migration only tells Django's state where the model now lives.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("runs", "0003_run_alert_cursor_run_collaborators_and_more"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Job",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        ("kind", models.CharField(choices=[("import_evalset", "Import Evalset"), ("generation", "Generation"), ("metrics", "Metrics"), ("detection", "Detection")], max_length=30)),
                        ("status", models.CharField(choices=[("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")], db_index=True, default="queued", max_length=20)),
                        ("params", models.JSONField(blank=True, default=dict)),
                        ("result", models.JSONField(blank=True, default=dict)),
                        ("progress", models.FloatField(default=0.0)),
                        ("progress_message", models.CharField(blank=True, max_length=500)),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("error", models.TextField(blank=True)),
                        ("worker", models.CharField(blank=True, max_length=300)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("heartbeat_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("checkpoint", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="jobs", to="runs.checkpoint")),
                        ("eval_set", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="jobs", to="runs.evalset")),
                        ("run", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="jobs", to="runs.run")),
                    ],
                    options={
                        "db_table": "runs_job",
                        "ordering": ["-created_at"],
                        "constraints": [
                            models.CheckConstraint(condition=models.Q(("progress__gte", 0.0), ("progress__lte", 1.0)), name="job_progress_in_unit_range"),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
