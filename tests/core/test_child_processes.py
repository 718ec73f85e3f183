"""evalsite.core.processes: how `manage.py demo` starts, watches and stops its children (no Django needed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalsite.core.processes import ChildProcesses, StopRequested, StopSignals

REPO = Path(__file__).resolve().parents[2]
# Ignores SIGTERM and leaves a grandchild in its process group, like a worker whose warm shutdown hangs.
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
)


def wait_for(predicate, *, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_child_that_ignores_sigterm_is_killed_with_its_process_group_after_the_grace_time(tmp_path):
    children = ChildProcesses(grace_s=0.5)
    child = children.start(
        "stubborn", [sys.executable, "-c", STUBBORN], log_path=tmp_path / "log", env=dict(os.environ)
    )
    grandchild = int(
        wait_for(lambda: (tmp_path / "log").read_text().strip(), timeout=30, message="grandchild")
    )
    assert os.getsid(child.pid) == child.pid != os.getsid(0)  # a terminal's Ctrl-C does not reach it

    assert children.stop() == [child]
    assert child.proc.returncode == -signal.SIGKILL
    wait_for(lambda: gone(grandchild), timeout=10, message="the grandchild to be killed")


def test_a_child_that_dies_on_its_own_is_reported_with_its_status_and_stays_unreaped_until_stopped(tmp_path):
    children = ChildProcesses(grace_s=5)
    sleeper = children.start("sleeper", ["sleep", "60"], log_path=tmp_path / "log", env=dict(os.environ))
    quitter = children.start(
        "quitter",
        [sys.executable, "-c", "raise SystemExit(3)"],
        log_path=tmp_path / "log",
        env=dict(os.environ),
    )
    exited = wait_for(children.first_exited, timeout=30, message="the quitter to exit")
    assert exited == (quitter, "status 3")
    assert Path(f"/proc/{quitter.pid}").exists()  # a zombie: its pid (= process group id) is not reused
    os.kill(sleeper.pid, signal.SIGKILL)
    wait_for(lambda: sleeper.exit_status() == "signal SIGKILL", timeout=10, message="the sleeper's status")

    assert children.stop() == []
    assert (sleeper.proc.returncode, quitter.proc.returncode) == (-signal.SIGKILL, 3)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_children_get_sigterm_when_their_parent_is_killed(tmp_path):
    parent = (
        "import os, signal, time; from pathlib import Path; from evalsite.core.processes import ChildProcesses\n"
        f"c = ChildProcesses().start('s', ['sleep', '60'], log_path=Path({str(tmp_path / 'log')!r}), "
        "env=dict(os.environ))\n"
        "while not Path(f'/proc/{c.pid}/cmdline').read_bytes().startswith(b'sleep'):\n"
        "    time.sleep(0.01)\n"
        "print(c.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    wait_for(lambda: gone(int(out.stdout)), timeout=10, message="the orphaned child to end")


@pytest.fixture
def stop_signals_at_their_defaults():
    """A terminal's defaults for SIGINT/SIGTERM. pytest started in the background of a
    non-interactive shell (as CI may be) inherits SIGINT ignored, which StopSignals keeps ignored."""
    previous = {
        s: signal.signal(s, d)
        for s, d in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))
    }
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.mark.usefixtures("stop_signals_at_their_defaults")
def test_the_first_stop_signal_raises_once_and_later_ones_are_only_counted():
    with StopSignals() as signals:
        with pytest.raises(StopRequested, match="SIGTERM"):
            signal.raise_signal(signal.SIGTERM)  # runs the Python handler before it returns
        signal.raise_signal(signal.SIGINT)
        assert signals.received == [signal.SIGTERM, signal.SIGINT]


@pytest.mark.usefixtures("stop_signals_at_their_defaults")
def test_a_stop_signal_while_held_is_raised_on_leaving_the_block():
    with StopSignals() as signals:
        with pytest.raises(StopRequested, match="SIGINT"):
            with signals.held():
                signal.raise_signal(signal.SIGINT)
                reached_the_end_of_the_block = True
        assert reached_the_end_of_the_block


def test_an_ignored_signal_stays_ignored_as_under_nohup():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals() as signals:
            signal.raise_signal(signal.SIGHUP)
            assert signals.received == []
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
