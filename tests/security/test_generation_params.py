"""Issue 14 finding 9: generation params were barely checked — ``duration_s=1e9``, ``batch_size=1e9``,
``device: "cuda:7"`` and ``dtype: "whatever"`` passed, and ``duration_s=60`` produced 60 s clips."""

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from evalsite.core.exceptions import ApplicationError
from evalsite.jobs.models import Job
from evalsite.jobs.services import job_execute
from evalsite.runs import generation
from evalsite.runs.generation_services import generation_job_work
from evalsite.runs.models import Checkpoint, Generation
from evalsite.runs.params import PARAM_INVALID, PARAM_UNKNOWN, generation_params_check
from evalsite.runs.services import checkpoint_register, run_create
from tests.factories import EvalSetFactory

pytestmark = pytest.mark.django_db

BAD = [
    ("duration_s", 1e9),
    ("duration_s", 60),
    ("duration_s", 0),
    ("duration_s", -1),
    ("duration_s", "4"),
    ("batch_size", 10**9),
    ("batch_size", 0),
    ("batch_size", 2.5),
    ("batch_size", True),
    ("batch_size", "8"),
    ("device", "cuda:7"),
    ("device", "cuda:-1"),
    ("device", "mps"),
    ("device", "/dev/nvidia0"),
    ("device", 0),
    ("dtype", "whatever"),
    ("dtype", "float16"),
    ("dtype", None),
    ("seed", -1),
    ("seed", 2**31),
    ("seed", True),
    ("seed", 1.5),
    ("top_k", 0),
    ("top_k", 10**9),
    ("top_p", 0),
    ("top_p", 1.5),
    ("temperature", 0),
    ("temperature", 1e9),
    ("cfg_scale", 1e9),
    ("cfg_scale", -1),
    ("tf32", "yes"),
    ("resample", 1),
]
GOOD = [
    {},
    {"duration_s": 30},
    {"duration_s": 0.1},
    {"duration_s": None},
    {"batch_size": 256},
    {"batch_size": 1},
    {"device": "auto"},
    {"device": "cpu"},
    {"device": "cuda"},
    {"device": "cuda:0"},
    {"dtype": "bf16"},
    {"dtype": "fp32"},
    {"seed": 0},
    {"top_k": 50, "top_p": 0.95, "temperature": 0.8, "cfg_scale": 3},
    {"tf32": True, "resample": False},
]


@pytest.fixture
def checkpoint():
    """A run with an eval set and a registered checkpoint (not evaluated), and the run's API client."""
    user = get_user_model().objects.create_user("ada", password="x")
    run, token = run_create(
        name="gen", kind="generator", model_family="aar", eval_set=EvalSetFactory(), owner=user
    )
    ckpt = Checkpoint.objects.create(run=run, step=5, uri="/ckpt/missing.pt")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return ckpt, client


def evaluate(client, ckpt, params):
    return client.post(
        f"/api/v1/runs/{ckpt.run_id}/checkpoints/{ckpt.step}/evaluate/", {"params": params}, format="json"
    )


@pytest.mark.parametrize("key, value", BAD)
def test_each_bad_generation_param_is_refused_at_the_api_naming_it(checkpoint, key, value):
    ckpt, client = checkpoint
    response = evaluate(client, ckpt, {key: value})
    assert response.status_code == 400, response.json()
    fields = response.json()["extra"]["fields"]
    assert list(fields) == [f"params.{key}"] and fields[f"params.{key}"][0].startswith(
        f"params.{key} must be"
    )
    assert not Job.objects.exists()


def test_an_unknown_key_is_refused_naming_it(checkpoint):
    ckpt, client = checkpoint
    response = evaluate(client, ckpt, {"sed": 1})
    assert response.status_code == 400
    assert response.json()["message"] == PARAM_UNKNOWN.format(
        key="sed",
        known=(
            "batch_size, cfg_scale, device, dtype, duration_s, resample, seed, temperature, tf32, top_k, top_p"
        ),
    )
    assert not Job.objects.exists()


@pytest.mark.parametrize("params", GOOD)
def test_good_generation_params_are_accepted(checkpoint, params):
    ckpt, client = checkpoint
    response = evaluate(client, ckpt, params)
    assert response.status_code == 202, response.json()
    assert Job.objects.get().params == params


def test_the_operator_sets_how_many_cuda_devices_a_worker_has(checkpoint, settings):
    ckpt, client = checkpoint
    assert evaluate(client, ckpt, {"device": "cuda:3"}).status_code == 400
    settings.EVALSITE_GENERATION_CUDA_DEVICES = 4
    assert evaluate(client, ckpt, {"device": "cuda:3"}).status_code == 202


def test_registering_a_checkpoint_with_bad_params_creates_nothing(checkpoint):
    ckpt, _ = checkpoint
    with pytest.raises(ApplicationError) as exc:
        checkpoint_register(run=ckpt.run, step=6, uri="/ckpt/other.pt", params={"duration_s": 60})
    assert exc.value.extra["fields"] == {"params.duration_s": [exc.value.message]}
    assert not Checkpoint.objects.filter(step=6).exists() and not Job.objects.exists()


def test_a_job_whose_stored_params_are_bad_fails_with_the_reason_before_loading_a_model(
    checkpoint, monkeypatch
):
    """Params written to the database directly (admin, an older version) are checked again by the worker."""
    ckpt, _ = checkpoint
    loads = []
    monkeypatch.setattr(generation.model_cache, "get", lambda *a, **k: loads.append(a))
    job = Job.objects.create(
        kind=Job.Kind.GENERATION,
        run=ckpt.run,
        checkpoint=ckpt,
        params={"duration_s": 60, "batch_size": 10**9},
    )
    ended = job_execute(job_id=job.pk, worker="test", work=generation_job_work)
    assert ended.status == Job.Status.FAILED
    assert ended.error == PARAM_INVALID.format(
        key="duration_s", rule="seconds from 0.1 to 30, or null", value="60"
    )
    assert loads == [] and not Generation.objects.exists()
    ckpt.refresh_from_db()
    assert ckpt.status == Checkpoint.Status.FAILED


def test_params_that_are_not_an_object_are_refused():
    for params in ([], "duration_s=60", None, 5):
        with pytest.raises(ApplicationError) as exc:
            generation_params_check(params)
        assert "params" in exc.value.extra["fields"]
