"""Issue 14 finding 1: a checkpoint file (or a run) chose which code a worker ran.

The attack as run: a plain-data checkpoint (``torch.save`` of a dict, so ``weights_only=True`` did not
help) named ``"family": "builtins:exec"`` with ``"kwargs": "<python source>"``; a run token registered it
on a run whose family is ``auto``, and the generation job imported ``builtins:exec`` (the family named by
the file) and called it with the kwargs: the source ran on the worker. A run could also be created
with ``model_family="os:system"``. Now a family is a built-in, an installed entry point, or a dotted path
the operator lists in ``EVALSITE_MODEL_PLUGINS``; a file may name only a registered family.
"""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
import torch
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory
from rest_framework.test import APIClient

import models
from evalsite.api.services import researcher_token_issue
from evalsite.jobs.models import Job
from evalsite.runs import generation as gen
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.families import MODEL_FAMILY_NOT_ALLOWED
from evalsite.runs.models import Checkpoint, EvalSet, Generation, Run
from evalsite.runs.services import run_create
from tests.factories import write_tone

pytestmark = pytest.mark.django_db

ATTACK_FAMILIES = ["builtins:exec", "os:system"]


@pytest.fixture(autouse=True)
def fresh_model_cache():
    gen.model_cache.clear()
    yield
    gen.model_cache.clear()


@pytest.fixture
def eval_set(tmp_path) -> EvalSet:
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        write_tone(clips / f"utt{i}.wav", freq=200 + 50 * i, seconds=0.3, rate=22050, seed=i)
    return EvalSet.objects.get(pk=evalset_import(name="es", source=clips).eval_set_id)


@pytest.fixture
def researcher_client() -> APIClient:
    user = get_user_model().objects.create_user("mallory", password="x")
    return _client(researcher_token_issue(user=user))


def _client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _exec_checkpoint(path, marker) -> None:
    """The attack file: plain data only, so it loads with weights_only=True."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "evalsite_checkpoint": 1,
            "family": "builtins:exec",
            "kind": "vocoder",
            "kwargs": f"open({str(marker)!r}, 'w').write('code from a checkpoint ran')",
            "state_dict": {"w": torch.zeros(4)},
            "metadata": {},
        },
        path,
    )


def _register_and_generate(client: APIClient, run: Run, path, captured) -> Job:
    with captured(execute=True):  # the generation job runs eagerly when the registration commits
        response = client.post(
            f"/api/v1/runs/{run.pk}/checkpoints/", {"step": 1, "uri": str(path)}, format="json"
        )
    assert response.status_code == 201, response.json()
    return Job.objects.get(checkpoint__run=run, kind=Job.Kind.GENERATION)


def test_a_checkpoint_naming_builtins_exec_registered_by_a_run_token_on_an_auto_run_runs_no_code(
    tmp_path, eval_set, eager, django_capture_on_commit_callbacks
):
    marker = tmp_path / "pwned"
    run, token = run_create(name="auto-run", kind="vocoder", model_family="auto", eval_set=eval_set)
    path = tmp_path / "ckpt" / "checkpoint_step_1.pt"
    _exec_checkpoint(path, marker)

    job = _register_and_generate(_client(token), run, path, django_capture_on_commit_callbacks)

    assert not marker.exists(), "the checkpoint's kwargs were executed"
    checkpoint = Checkpoint.objects.get(run=run, step=1)
    assert (job.status, checkpoint.status) == (Job.Status.FAILED, Checkpoint.Status.FAILED)
    assert job.error.startswith(f"cannot load checkpoint {path}: ")
    assert "the checkpoint names model family 'builtins:exec', which is not a registered family" in job.error
    assert "a checkpoint file never chooses which code runs" in job.error
    assert not Generation.objects.exists()
    assert not Job.objects.filter(kind=Job.Kind.METRICS).exists()


def test_the_library_refuses_the_file_before_building_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "exec.pt"
    _exec_checkpoint(path, marker)
    for load in (lambda: models.load(path), lambda: models.config_from_checkpoint(path)):
        with pytest.raises(models.ModelLoadError, match="not a registered family"):
            load()
    # Allowing the dotted path for an explicitly named family does not let the file name it either.
    with pytest.raises(models.ModelLoadError, match="not a registered family"):
        models.load(path, plugins=["builtins:exec"])
    assert not marker.exists()


@pytest.mark.parametrize("family", ATTACK_FAMILIES)
def test_creating_a_run_with_a_dotted_path_family_is_a_400_naming_the_field(family, researcher_client):
    response = researcher_client.post(
        "/api/v1/runs/", {"name": "evil", "kind": "vocoder", "model_family": family}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert list(body["extra"]["fields"]) == ["model_family"]
    reason = body["extra"]["fields"]["model_family"][0]
    assert reason.startswith(MODEL_FAMILY_NOT_ALLOWED.split("{")[0] + repr(family))
    assert "hifigan" in reason and "EVALSITE_MODEL_PLUGINS" in reason
    assert "model_family" in body["message"]
    assert not Run.objects.exists()


@pytest.mark.parametrize("family", ATTACK_FAMILIES)
def test_patching_a_run_to_a_dotted_path_family_is_a_400_and_changes_nothing(family, researcher_client):
    created = researcher_client.post(
        "/api/v1/runs/", {"name": "voc", "kind": "vocoder", "model_family": "hifigan"}, format="json"
    )
    assert created.status_code == 201
    run_id = created.json()["id"]
    response = researcher_client.patch(
        f"/api/v1/runs/{run_id}/", {"model_family": family, "config": {"x": 1}}, format="json"
    )
    assert response.status_code == 400 and list(response.json()["extra"]["fields"]) == ["model_family"]
    run = Run.objects.get(pk=run_id)
    assert (run.model_family, run.config) == ("hifigan", {})
    # A registered family is still accepted.
    response = researcher_client.patch(f"/api/v1/runs/{run_id}/", {"model_family": "auto"}, format="json")
    assert response.status_code == 200 and Run.objects.get(pk=run_id).model_family == "auto"


@pytest.mark.parametrize("family", ATTACK_FAMILIES)
def test_the_create_run_command_and_the_admin_form_refuse_a_dotted_path_family(family, eval_set):
    with pytest.raises(CommandError, match=r"^model_family: model_family '.*' is not allowed"):
        call_command(
            "create_run",
            "evil",
            "--kind",
            "vocoder",
            "--family",
            family,
            "--eval-set",
            "es",
            stdout=StringIO(),
        )
    run, _ = run_create(name="voc", kind="vocoder", model_family="hifigan", eval_set=eval_set)
    request = RequestFactory().get("/")
    request.user = get_user_model().objects.create_superuser("root", password="x")
    form_class = admin.site._registry[Run].get_form(request, run)
    data = {
        "name": run.name,
        "kind": run.kind,
        "model_family": family,
        "config": "{}",
        "eval_set": eval_set.pk,
        "alert_cursor": 0,
    }
    form = form_class(data=data, instance=run)
    assert not form.is_valid()
    assert "is not allowed" in form.errors["model_family"][0]
    assert list(Run.objects.values_list("name", "model_family")) == [("voc", "hifigan")]


def test_a_run_saved_with_a_dotted_path_before_the_fix_still_runs_no_code(
    tmp_path, eval_set, eager, django_capture_on_commit_callbacks, monkeypatch
):
    module = f"evalsite_sideeffect_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef make(**kwargs): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run, token = run_create(name="legacy", kind="vocoder", model_family="hifigan", eval_set=eval_set)
    Run.objects.filter(pk=run.pk).update(model_family=f"{module}:make")  # a row written before validation
    path = tmp_path / "ckpt" / "good.pt"
    models.save_checkpoint(models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny")), path)

    job = _register_and_generate(_client(token), run, path, django_capture_on_commit_callbacks)

    assert job.status == Job.Status.FAILED and "not on the plug-in allow-list" in job.error
    assert not marker.exists(), "the plug-in module was imported"
    assert not Generation.objects.exists()


PLUGIN_SOURCE = """
import models


class OwnVocoder(models.HiFiGANVocoder):
    pass
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """An importable factory module (what a researcher's own architecture would be)."""
    module = f"evalsite_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:OwnVocoder"


def _plugin_checkpoint(plugin: str, path) -> None:
    config = models.HiFiGANVocoder.preset("tiny")
    models.save_checkpoint(models.build_model(plugin, config, plugins=[plugin]), path)


def test_a_plugin_the_operator_lists_is_accepted_and_generates(
    tmp_path, eval_set, plugin, settings, researcher_client, eager, django_capture_on_commit_callbacks
):
    settings.EVALSITE_MODEL_PLUGINS = [plugin]
    created = researcher_client.post(
        "/api/v1/runs/",
        {"name": "own-arch", "kind": "vocoder", "model_family": plugin, "eval_set": "es"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    run = Run.objects.get(pk=created.json()["id"])
    path = tmp_path / "ckpt" / "own.pt"
    _plugin_checkpoint(plugin, path)

    job = _register_and_generate(
        _client(created.json()["token"]), run, path, django_capture_on_commit_callbacks
    )

    assert job.status == Job.Status.DONE, job.error
    assert Generation.objects.filter(checkpoint__run=run, status="done").count() == 2


def test_the_same_plugin_not_listed_is_refused_at_the_api_and_at_load(
    tmp_path, eval_set, plugin, settings, researcher_client, eager, django_capture_on_commit_callbacks
):
    settings.EVALSITE_MODEL_PLUGINS = []
    refused = researcher_client.post(
        "/api/v1/runs/",
        {"name": "own-arch", "kind": "vocoder", "model_family": plugin, "eval_set": "es"},
        format="json",
    )
    assert refused.status_code == 400 and list(refused.json()["extra"]["fields"]) == ["model_family"]
    assert not Run.objects.exists()

    # Listed when the run was made, taken off the list later: the worker refuses to import it.
    settings.EVALSITE_MODEL_PLUGINS = [plugin]
    run, token = run_create(name="own-arch", kind="vocoder", model_family=plugin, eval_set=eval_set)
    settings.EVALSITE_MODEL_PLUGINS = []
    path = tmp_path / "ckpt" / "own.pt"
    _plugin_checkpoint(plugin, path)
    job = _register_and_generate(_client(token), run, path, django_capture_on_commit_callbacks)
    assert job.status == Job.Status.FAILED and "not on the plug-in allow-list" in job.error
    assert not Generation.objects.exists()


def test_the_web_tier_lists_the_same_families_as_the_library_without_importing_torch():
    import subprocess
    import sys

    import models
    from evalsite.runs import families

    assert families.BUILTIN_FAMILY_NAMES == tuple(models.BUILTIN_FAMILIES)
    assert families.ENTRY_POINT_GROUP == models.registry.ENTRY_POINT_GROUP
    check = (
        "import django, os, sys; os.environ['DJANGO_SETTINGS_MODULE'] = 'evalsite.settings.test'; "
        "django.setup(); from evalsite.runs.families import model_family_validate; "
        "model_family_validate('hifigan'); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
