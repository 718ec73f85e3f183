import pytest
from django.core.management import CommandError, call_command

from evalsite.jobs.models import Job
from evalsite.runs.models import Checkpoint, Run
from tests.factories import EvalSetFactory

pytestmark = pytest.mark.django_db


def test_create_run_prints_the_token_once_and_stores_only_its_hash(capsys):
    EvalSetFactory(name="ljs")
    call_command(
        "create_run",
        "hifi",
        "--kind",
        "vocoder",
        "--family",
        "hifigan",
        "--eval-set",
        "ljs",
        "--metrics",
        "si_sdr",
        "stoi",
    )
    out = capsys.readouterr().out
    token = out.rsplit(": ", 1)[1].strip()
    run = Run.objects.get(name="hifi")
    assert token.startswith("evr_") and token not in run.api_token_hash
    assert run.config == {"metrics": ["si_sdr", "stoi"]} and run.eval_set.name == "ljs"


def test_create_run_names_a_missing_eval_set():
    with pytest.raises(CommandError, match="no eval set named 'nope'"):
        call_command("create_run", "x", "--kind", "vocoder", "--eval-set", "nope")


def test_register_checkpoint_queues_generation_once(capsys, tmp_path):
    EvalSetFactory(name="ljs")
    call_command("create_run", "hifi", "--kind", "vocoder", "--eval-set", "ljs")
    call_command("register_checkpoint", "hifi", "1000", str(tmp_path / "g_00001000"))
    call_command("register_checkpoint", "hifi", "1000", str(tmp_path / "g_00001000"))
    out = capsys.readouterr().out
    assert "generation job" in out and "was already registered" in out
    assert Checkpoint.objects.count() == 1 and Job.objects.filter(kind="generation").count() == 1
