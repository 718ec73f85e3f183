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
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, wait_for

pytestmark = pytest.mark.integration

EMBEDDED_ENV_DROP = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "EVALSITE_MEDIA_ROOT",
    "DJANGO_SETTINGS_MODULE",
    "DEBUG",
    "SECRET_KEY",
)
DEMO_CMD = [sys.executable, "manage.py", "demo"]


def embedded_env(var_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED_ENV_DROP}
    env.update(EVALSITE_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (its children in their own sessions included), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                parents[int(entry.name)] = int(ppid)
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def terminal_job_signals() -> None:
    """SIGINT and SIGHUP at their defaults, as in a job started from a terminal (this pytest may run in the
    background of a non-interactive shell, which ignores SIGINT, and the demo keeps an inherited ignore)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class ServingDemo:
    """`manage.py demo` serving on a free port, in a process group of its own like a job in a terminal."""

    def __init__(self, var_dir: Path, out_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out_path = out_path
        with open(out_path, "w") as out:
            self.proc = subprocess.Popen(
                [*DEMO_CMD, "--port", str(self.port)],
                cwd=REPO,
                env=embedded_env(var_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=terminal_job_signals,
            )

    def output(self) -> str:
        return self.out_path.read_text()

    def wait_serving(self) -> set[int]:
        """Waits for the URLs and the web server; returns the demo's processes below it at that moment."""
        wait_for(
            lambda: "evalsite demo is running" in self.output() or self.proc.poll() is not None,
            # The module's first serve also runs collectstatic (≈ 25 CPU seconds; minutes on a busy machine).
            timeout=600,
            interval=0.5,
            message="demo to print its URLs",
        )
        assert self.proc.poll() is None, self.output()

        def server_up():
            try:
                return urllib.request.urlopen(f"{self.base}/healthz", timeout=2).status == 200
            except OSError:
                return False

        wait_for(server_up, timeout=60, interval=0.3, message="web server")

        def all_started():
            # The worker, its pool process and its embedded beat, and the web server.
            found = descendants(self.proc.pid)
            return found if len(found) >= 4 else None

        return wait_for(all_started, timeout=30, interval=0.3, message="the worker's pool and beat processes")

    def child_pid(self, name: str) -> int:
        return int(re.search(rf"^{name} started \(pid (\d+)", self.output(), re.M).group(1))

    def wait_exit(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Teardown for a test that failed early: the children die with the demo (they get SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def assert_all_gone(pids: set[int]) -> None:
    wait_for(
        lambda: not any(alive(pid) for pid in pids),
        timeout=30,
        interval=0.2,
        message=f"the demo's processes to end (left: {sorted(p for p in pids if alive(p))})",
    )


def assert_stopped_quietly(returncode: int, out: str) -> None:
    assert returncode == 0, out
    assert "stopping the web server and the worker" in out, out
    # "stopped (killed the worker)" only if its warm shutdown outlasted the grace time (a machine far too busy).
    assert out.rstrip().splitlines()[-1].startswith("stopped"), out
    for noise in ("Traceback", "CommandError", "exited unexpectedly", "KeyboardInterrupt"):
        assert noise not in out, out


@pytest.fixture(scope="module")
def demo_var(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One var/ for this module, filled by a first `demo --no-serve` (it trains the demo vocoder, the slow
    part); the serving tests reuse it one after another, as a user's second `make demo` does."""
    var_dir = tmp_path_factory.mktemp("demo-var")
    first = subprocess.run(
        [*DEMO_CMD, "--no-serve"],
        cwd=REPO,
        env=embedded_env(var_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    return var_dir, first


def test_demo_without_serving_imports_the_speech_set_through_the_worker_and_is_idempotent(demo_var):
    var_dir, first = demo_var
    assert "24 created, 0 unchanged, 0 rejected" in first.stdout
    # Both tests published with the quality controls on (a design warning would have stopped the demo).
    assert "mushra test 'demo-mushra' built: 28 trials (23 main, 1 training, 4 gold/trapping)" in first.stdout
    assert "smos test 'demo-smos' built: 76 trials (69 main, 3 training, 4 gold/trapping)" in first.stdout
    assert (
        first.stdout.count("24 clips generated on cpu") == 5
    )  # vocoder: 3 trained checkpoints; tokenizer: 2
    assert (var_dir / "evalsite.sqlite3").exists() and (var_dir / "queue").is_dir()
    again = subprocess.run(
        [*DEMO_CMD, "--no-serve"],
        cwd=REPO,
        env=embedded_env(var_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 created, 24 unchanged, 0 rejected" in again.stdout
    assert "clips generated" not in again.stdout  # checkpoints are registered once
    assert "stopping the worker" in again.stdout and again.stdout.rstrip().splitlines()[-1].startswith(
        "stopped"
    )


def test_demo_serves_the_site_with_playable_demo_audio_and_stops_its_children_on_ctrl_c(demo_var, tmp_path):
    demo = ServingDemo(demo_var[0], tmp_path / "demo.out")
    try:
        processes = demo.wait_serving()
        out = demo.output()
        base = demo.base
        assert f"{base}/admin/" in out
        evalset_url = re.search(rf"{re.escape(base)}/evalsets/\d+/", out).group(0)

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login_page = opener.open(f"{base}/admin/login/").read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page).group(1)
        form = urllib.parse.urlencode(
            {"username": "demo", "password": "demo", "csrfmiddlewaretoken": token, "next": "/"}
        ).encode()
        opener.open(
            urllib.request.Request(
                f"{base}/admin/login/", data=form, headers={"Referer": f"{base}/admin/login/"}
            )
        )
        page = opener.open(evalset_url).read().decode()
        assert page.count("<audio") == 24 and "The birch canoe slid on the smooth planks." in page
        audio_src = re.search(r'<audio[^>]+src="([^"]+)"', page).group(1)
        audio = opener.open(base + audio_src)
        assert audio.headers["Content-Type"] in ("audio/wav", "audio/x-wav") and audio.read(4) == b"RIFF"
        run_url = re.search(rf"{re.escape(base)}/runs/\d+/", out).group(0)
        run_page = opener.open(run_url).read().decode()
        assert run_page.count("<audio") == 24 * 4  # reference + three trained checkpoints per item

        # Ctrl-C in a terminal: SIGINT to the whole foreground process group, the demo's children included
        # unless they run in sessions of their own.
        os.killpg(demo.proc.pid, signal.SIGINT)
        returncode = demo.wait_exit()
    finally:
        demo.close()
    assert_stopped_quietly(returncode, demo.output())
    assert_all_gone(processes)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_demo_stops_its_children_and_exits_0_on_a_stop_signal_to_the_demo_alone(demo_var, tmp_path, signum):
    demo = ServingDemo(demo_var[0], tmp_path / "demo.out")
    try:
        processes = demo.wait_serving()
        os.kill(demo.proc.pid, signum)
        returncode = demo.wait_exit()
    finally:
        demo.close()
    assert_stopped_quietly(returncode, demo.output())
    assert_all_gone(processes)


def test_demo_reports_a_child_that_crashes_while_serving_by_name_and_log_and_stops_the_rest(
    demo_var, tmp_path
):
    demo = ServingDemo(demo_var[0], tmp_path / "demo.out")
    try:
        processes = demo.wait_serving()
        worker = demo.child_pid("worker")
        os.kill(worker, signal.SIGKILL)
        returncode = demo.wait_exit()
    finally:
        demo.close()
    out = demo.output()
    assert returncode == 1, out
    log = demo_var[0] / "log" / "worker.log"
    assert (
        f"CommandError: the worker (pid {worker}) exited unexpectedly (signal SIGKILL); see its log {log}"
        in out
    )
    assert "stopping the web server (Ctrl-C again to kill) ..." in out
    assert "Traceback" not in out
    assert_all_gone(processes)


def test_the_demos_children_do_not_outlive_a_killed_demo(demo_var, tmp_path):
    demo = ServingDemo(demo_var[0], tmp_path / "demo.out")
    try:
        processes = demo.wait_serving()
        demo.proc.kill()  # no chance to stop them: they get SIGTERM from the kernel (PR_SET_PDEATHSIG)
        demo.wait_exit()
    finally:
        demo.close()
    assert_all_gone(processes)
