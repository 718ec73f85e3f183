"""The README's first command on the embedded default: SQLite, filesystem queue, a real worker, the web server."""

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.integration.conftest import REPO, wait_for

pytestmark = pytest.mark.integration

EMBEDDED_ENV_DROP = ("DATABASE_URL", "CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT", "DJANGO_SETTINGS_MODULE", "DEBUG",
                     "SECRET_KEY")


def embedded_env(var_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_ENV_DROP}
    env.update(EVALSITE_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_without_serving_imports_the_speech_set_through_the_worker_and_is_idempotent(tmp_path):
    cmd = [sys.executable, "manage.py", "demo", "--no-serve"]
    first = subprocess.run(cmd, cwd=REPO, env=embedded_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "24 created, 0 unchanged, 0 rejected" in first.stdout
    assert first.stdout.count("24 clips generated on cpu") == 5  # vocoder: 3 trained checkpoints; tokenizer: 2
    assert (tmp_path / "evalsite.sqlite3").exists() and (tmp_path / "queue").is_dir()
    again = subprocess.run(cmd, cwd=REPO, env=embedded_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 created, 24 unchanged, 0 rejected" in again.stdout
    assert "clips generated" not in again.stdout  # checkpoints are registered once


def test_demo_serves_the_site_with_playable_demo_audio_and_stops_its_children_on_ctrl_c(tmp_path):
    port = free_port()
    log = open(tmp_path / "demo.out", "w+")
    proc = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port)], cwd=REPO,
                            env=embedded_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "evalsite demo is running" in (tmp_path / "demo.out").read_text(), timeout=300, interval=0.5,
                 message="demo to print its URLs")
        out = (tmp_path / "demo.out").read_text()
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/admin/" in out
        evalset_url = re.search(rf"{re.escape(base)}/evalsets/\d+/", out).group(0)

        def server_up():
            try:
                return urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(server_up, timeout=60, interval=0.3, message="web server")

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login_page = opener.open(f"{base}/admin/login/").read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page).group(1)
        form = urllib.parse.urlencode({"username": "demo", "password": "demo", "csrfmiddlewaretoken": token,
                                       "next": "/"}).encode()
        opener.open(urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"}))
        page = opener.open(evalset_url).read().decode()
        assert page.count("<audio") == 24 and "The birch canoe slid on the smooth planks." in page
        audio_src = re.search(r'<audio[^>]+src="([^"]+)"', page).group(1)
        audio = opener.open(base + audio_src)
        assert audio.headers["Content-Type"] in ("audio/wav", "audio/x-wav") and audio.read(4) == b"RIFF"
        run_url = re.search(rf"{re.escape(base)}/runs/\d+/", out).group(0)
        run_page = opener.open(run_url).read().decode()
        assert run_page.count("<audio") == 24 * 4  # reference + three trained checkpoints per item
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    out = (tmp_path / "demo.out").read_text()
    assert "stopping" in out
    children = subprocess.run(["pgrep", "-f", f"runserver 127.0.0.1:{port}"], capture_output=True, text=True)
    assert children.stdout.strip() == ""
