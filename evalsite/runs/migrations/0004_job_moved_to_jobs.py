# Job now lives in the jobs app (jobs.0001 takes it over, same table runs_job): Generation.job points
# there and runs forgets the model. Nothing changes in the database.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0003_run_alert_cursor_run_collaborators_and_more"),
        ("jobs", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="generation",
                    name="job",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="generations", to="jobs.job"),
                ),
                migrations.DeleteModel(name="Job"),
            ],
            database_operations=[],
        ),
    ]
