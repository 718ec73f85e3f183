"""Child processes of a foreground command (``manage.py demo``) and the signals that stop it.

Each child runs in its own session, so a terminal's Ctrl-C (SIGINT to the whole foreground process group)
reaches only the parent, which then stops the children in a defined order. Without that, the Celery worker
took the same Ctrl-C itself (and exits with status 1 on SIGINT), and a parent that had not acted on it yet
reported that exit as a crash.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Runs in the child between fork and the real command (a separate interpreter, not a preexec_fn, which is
# unsafe once the parent has threads, as torch's are): the kernel sends the child SIGTERM when its parent
# dies, so a SIGKILLed parent leaves nothing behind; the getppid check covers a parent that died first.
# PR_SET_PDEATHSIG (1) survives execve (except into set-uid binaries). Linux only.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


class StopRequested(BaseException):
    """A stop signal arrived; a BaseException like KeyboardInterrupt, so `except Exception` does not eat it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns the first SIGINT, SIGTERM or SIGHUP into StopRequested in the main thread; later ones are
    only counted (`received`), so a second Ctrl-C cannot break off the stopping of the children.

    A signal ignored at start stays ignored, as Python does for SIGINT: SIGHUP under nohup, SIGINT in a
    job that a non-interactive shell started in the background.
    """

    def __init__(self, signums: Sequence[int] = STOP_SIGNALS) -> None:
        self.signums = tuple(signums)
        self.received: list[int] = []
        self._raise = True
        self._held = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in self.signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        if self._raise and not self._held:
            self._raise = False
            raise StopRequested(signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        """A stop signal inside the block is raised on leaving it, so a child is never started and then lost."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if not self._held and self._raise and self.received:
            self._raise = False
            raise StopRequested(self.received[0])

    def quiet(self) -> None:
        """From now on signals are only counted: stopping is under way."""
        self._raise = False


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_status(self) -> str | None:
        """How the child ended ("status 1", "signal SIGKILL"), or None while it runs.

        Looks without reaping (WNOWAIT): until `reap`, the zombie keeps the pid, and so the child's process
        group id, from being reused, which makes the final SIGKILL to the group safe.
        """
        if self.proc.returncode is not None:
            return _describe(self.proc.returncode)
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return _describe(self.proc.wait())
        if info is None:
            return None
        return (
            f"status {info.si_status}"
            if info.si_code == os.CLD_EXITED
            else f"signal {_signame(info.si_status)}"
        )

    def reap(self) -> None:
        """SIGKILL whatever is left in the child's process group (its own children), then reap the child."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _describe(returncode: int) -> str:
    return f"status {returncode}" if returncode >= 0 else f"signal {_signame(-returncode)}"


class ChildProcesses:
    """Children started in their own sessions; `stop` ends them in reverse start order."""

    def __init__(self, *, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str], cwd: Path | None = None
    ) -> Child:
        if sys.platform == "linux":
            argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def first_exited(self) -> tuple[Child, str] | None:
        for child in self.children:
            status = child.exit_status()
            if status is not None:
                return child, status
        return None

    def stop(self, *, hurry: Callable[[], bool] = lambda: False) -> list[Child]:
        """SIGTERM each child (the last started first), wait up to `grace_s` (cut short when `hurry()` turns
        true, e.g. on a second Ctrl-C), then SIGKILL its process group; every child is reaped.

        Returns the children that had to be killed.
        """
        killed = []
        for child in reversed(self.children):
            if child.exit_status() is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + self.grace_s
                while child.exit_status() is None and time.monotonic() < deadline and not hurry():
                    time.sleep(0.05)
                if child.exit_status() is None:
                    killed.append(child)
            child.reap()
        return killed
