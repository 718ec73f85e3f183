"""The overview's jobs table names the run and checkpoint each job belongs to (issue 17, item 9)."""

import pytest
from django.urls import reverse

from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, Run
from tests.factories import EvalSetFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs():
    run = Run.objects.create(name="voc-big", kind="vocoder", model_family="hifigan")
    checkpoint = Checkpoint.objects.create(run=run, step=120000, uri="/c/120000")
    eval_set = EvalSetFactory(name="ljspeech-test-100")
    return {
        "run": run,
        "metrics": Job.objects.create(kind=Job.Kind.METRICS, run=run, checkpoint=checkpoint),
        "import": Job.objects.create(kind=Job.Kind.IMPORT_EVALSET, eval_set=eval_set),
        "eval_set": eval_set,
    }


def row_of(content: str, job: Job) -> str:
    start = content.index(f"<tr><td>{job.pk}</td>")
    return content[start : content.index("</tr>", start)]


def test_each_job_row_links_its_run_and_checkpoint_step(admin_client, jobs):
    content = admin_client.get(reverse("runs:overview")).content.decode()
    run_url = reverse("runs:run-detail", args=[jobs["run"].pk])
    row = row_of(content, jobs["metrics"])
    assert f'<a href="{run_url}">voc-big</a>' in row
    assert f'<a href="{run_url}#step-120000">120000</a>' in row
    # An eval set import belongs to no run: it names its eval set instead, and has no step.
    row = row_of(content, jobs["import"])
    evalset_url = reverse("runs:evalset-detail", args=[jobs["eval_set"].pk])
    assert f'eval set <a href="{evalset_url}">ljspeech-test-100</a>' in row and "120000" not in row
    assert "<th>run</th><th>step</th>" in content


def test_the_jobs_table_reads_runs_and_checkpoints_in_the_same_query(
    admin_client, jobs, django_assert_max_num_queries
):
    for step in range(5):
        checkpoint = Checkpoint.objects.create(run=jobs["run"], step=step, uri=f"/c/{step}")
        Job.objects.create(kind=Job.Kind.GENERATION, run=jobs["run"], checkpoint=checkpoint)
    admin_client.get(reverse("runs:overview"))  # the session and user rows are read once per request
    with django_assert_max_num_queries(6):
        admin_client.get(reverse("runs:overview"))
