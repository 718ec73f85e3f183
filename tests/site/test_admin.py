import pytest
from django.contrib import admin
from django.urls import reverse

from evalsite.audio.models import AudioAsset
from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, EvalItem, EvalSet, Generation, Run
from tests.factories import CheckpointFactory, JobFactory

DOMAIN_MODELS = [Run, Checkpoint, EvalSet, EvalItem, AudioAsset, Generation, Job]


@pytest.mark.parametrize("model", DOMAIN_MODELS, ids=lambda m: m.__name__)
def test_every_domain_model_is_registered_and_searchable_in_the_admin(model):
    model_admin = admin.site._registry.get(model)
    assert model_admin is not None
    assert model_admin.search_fields


@pytest.mark.django_db
@pytest.mark.parametrize("model", DOMAIN_MODELS, ids=lambda m: m.__name__)
def test_each_admin_changelist_answers_a_search(admin_client, model):
    CheckpointFactory(run__name="needle-run")
    JobFactory(error="needle in the error")
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    response = admin_client.get(url, {"q": "needle"})
    assert response.status_code == 200


@pytest.mark.django_db
def test_a_search_finds_the_run_by_name_and_the_job_by_its_error(admin_client):
    CheckpointFactory(run__name="needle-run")
    JobFactory(error="needle in the error")
    runs = admin_client.get(reverse("admin:runs_run_changelist"), {"q": "needle"})
    jobs = admin_client.get(reverse("admin:jobs_job_changelist"), {"q": "needle"})
    assert runs.context["cl"].result_count == 1
    assert jobs.context["cl"].result_count == 1


@pytest.mark.django_db
def test_the_overview_needs_a_login_and_lists_eval_sets_for_a_researcher(client, admin_client):
    from tests.factories import EvalSetFactory

    EvalSetFactory(name="ljspeech-test-100")
    assert client.get("/").status_code == 302
    page = admin_client.get("/")
    assert page.status_code == 200 and b"ljspeech-test-100" in page.content


@pytest.mark.django_db
def test_healthz_answers_without_login(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_every_model_is_named_in_the_plural_as_english_does():
    """The admin's index lists models by verbose_name_plural; Django's default appends an "s"
    ("Webhook deliverys", "Reference statisticss")."""
    from django.apps import apps

    naive = []
    for model in apps.get_models():
        if not model.__module__.startswith("evalsite."):
            continue
        singular, plural = str(model._meta.verbose_name), str(model._meta.verbose_name_plural)
        if plural == singular + "s" and singular.endswith(("s", "x", "y", "ch", "sh", "us")):
            naive.append(f"{model._meta.label}: {plural!r}")
    assert naive == []
