"""``RuntimeHook`` against a real (empty) virtual environment standing in for a runtime."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import structlog.testing
from airflow_mlops.exceptions import MissingRuntimeError
from airflow_mlops.hooks.runtime import RuntimeCommandError, RuntimeHook

RUNTIME = "demo"


@pytest.fixture(scope="module")
def runtimes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runtimes")
    python = shutil.which("python3.11") or sys.executable
    subprocess.run([python, "-m", "venv", "--without-pip", str(root / RUNTIME)], check=True, timeout=120)
    return root


@pytest.fixture
def hook(runtimes_dir) -> RuntimeHook:
    return RuntimeHook(RUNTIME, runtimes_dir=str(runtimes_dir))


def _py(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# --- running ---------------------------------------------------------------------------


def test_run_streams_each_line_while_the_command_runs(hook, runtimes_dir, tmp_path):
    """The child waits for a file that the test creates only once the hook has logged its first line."""
    sentinel = tmp_path / "sentinel"
    script = _py(
        f"""
        import os, sys, time
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while not os.path.exists({str(sentinel)!r}) and time.monotonic() < deadline:
            time.sleep(0.02)
        print("saw sentinel" if os.path.exists({str(sentinel)!r}) else "no sentinel")
        print(sys.prefix)
        """
    )
    with structlog.testing.capture_logs() as events:

        def touch_when_logged():
            _wait_for(lambda: any(e["event"] == "[child] ready" for e in list(events)), 20, "the first line")
            sentinel.touch()

        watcher = threading.Thread(target=touch_when_logged, daemon=True)
        watcher.start()
        lines = hook.run([hook.python, "-c", script], log_prefix="[child] ")
        watcher.join(5)

    assert lines == ["ready", "saw sentinel", str(runtimes_dir / RUNTIME)]
    logged = [e["event"] for e in events]
    assert [f"[child] {line}" for line in lines] == [e for e in logged if e.startswith("[child] ")]


def test_run_keeps_the_last_200_lines(hook):
    lines = hook.run([hook.python, "-c", "for i in range(450): print(f'line {i}')"])
    assert lines == [f"line {i}" for i in range(250, 450)]


def test_child_gets_no_python_isolation_breakers(hook, runtimes_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/leaked/pythonpath")
    monkeypatch.setenv("VIRTUAL_ENV", "/leaked/venv")
    monkeypatch.setenv("PYTHONSTARTUP", "/leaked/startup.py")
    script = "import json, os, sys; print(json.dumps({'env': dict(os.environ), 'path': sys.path}))"

    (line,) = hook.run([hook.python, "-c", script], env={"MLOPS_EXTRA": "yes"})

    child = json.loads(line)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        assert name not in child["env"], f"{name} leaked into the runtime"
    assert not any("leaked" in entry for entry in child["path"])
    assert child["env"]["MLOPS_EXTRA"] == "yes"
    assert child["env"]["PATH"].split(os.pathsep)[0] == str(runtimes_dir / RUNTIME / "bin")
    assert os.environ["PYTHONPATH"] == "/leaked/pythonpath"  # ours untouched


# --- failures --------------------------------------------------------------------------


def test_failure_names_the_error_even_when_buried_under_later_output(hook):
    """A worker's error followed by a launcher's long shutdown chatter (the horovodrun shape)."""
    script = _py(
        """
        import subprocess, sys
        print("launching 2 workers")
        worker = "import sys; sys.stderr.write('warming up\\\\n'); {}['holdout']"
        subprocess.run([sys.executable, "-c", worker])
        for i in range(120):
            print(f"[launcher] shutting down rank {i % 2}, step {i}")
        sys.exit(3)
        """
    )
    with pytest.raises(RuntimeCommandError) as info:
        hook.run([hook.python, "-c", script])

    message = str(info.value)
    assert "exited with status 3" in message
    assert f"{RUNTIME} runtime" in message
    assert "KeyError: 'holdout'" in message  # 120 lines before the end
    assert "[launcher] shutting down rank 1, step 119" in message  # and the end of the output
    assert "step 50" not in message  # not the whole log


def test_failure_with_rank_prefixed_error_lines(hook):
    script = _py(
        """
        import sys
        print("[1]<stderr>:Traceback (most recent call last):")
        print("[1]<stderr>:RuntimeError: CUDA error: out of memory")
        for i in range(40):
            print(f"[0]<stdout>:epoch {i}")
        sys.exit(1)
        """
    )
    with pytest.raises(RuntimeCommandError, match=r"\[1\]<stderr>:RuntimeError: CUDA error: out of memory"):
        hook.run([hook.python, "-c", script])


def test_failure_names_an_error_followed_by_more_than_200_lines(hook):
    script = "import sys\nprint('ValueError: bad input')\nfor i in range(300): print(i)\nsys.exit(2)"
    with pytest.raises(RuntimeCommandError, match="ValueError: bad input"):
        hook.run([hook.python, "-c", script])


def test_run_stops_a_command_that_exceeds_its_timeout(hook):
    started = time.monotonic()
    with pytest.raises(RuntimeCommandError, match="did not finish within 0s"):
        hook.run([hook.python, "-c", "import time; time.sleep(3)"], timeout=0.3)
    assert time.monotonic() - started < 2.0


# --- stopping --------------------------------------------------------------------------


def _run_in_thread(hook: RuntimeHook, args: list[str]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["lines"] = hook.run(args)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_terminate_stops_the_command_and_its_children(hook, tmp_path):
    pids_file = tmp_path / "pids.json"
    script = _py(
        f"""
        import json, os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open({str(pids_file)!r} + ".tmp", "w") as f:
            json.dump([os.getpid(), grandchild.pid], f)
        os.replace({str(pids_file)!r} + ".tmp", {str(pids_file)!r})
        time.sleep(120)
        """
    )
    thread, outcome = _run_in_thread(hook, [hook.python, "-c", script])
    pids: list[int] = []
    try:
        _wait_for(pids_file.exists, 20, "the command to start its child")
        pids = json.loads(pids_file.read_text())
        assert all(_alive(pid) for pid in pids)

        hook.terminate(grace=5)
        thread.join(15)

        assert not thread.is_alive(), "run() did not return after terminate()"
        _wait_for(lambda: not any(_alive(pid) for pid in pids), 5, "the process tree to exit")
        assert isinstance(outcome.get("error"), RuntimeCommandError)
        assert f"status {-signal.SIGTERM}" in str(outcome["error"])
    finally:
        for pid in pids:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_terminate_kills_a_command_that_ignores_sigterm(hook, tmp_path):
    pid_file = tmp_path / "pid"
    script = _py(
        f"""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open({str(pid_file)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(120)
        """
    )
    thread, outcome = _run_in_thread(hook, [hook.python, "-c", script])
    pid = None
    try:
        _wait_for(pid_file.exists, 20, "the command to start")
        pid = int(pid_file.read_text())
        started = time.monotonic()
        hook.terminate(grace=0.5)
        thread.join(15)
        assert not _alive(pid)
        assert time.monotonic() - started < 10
        assert f"status {-signal.SIGKILL}" in str(outcome["error"])
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_terminate_without_a_running_command_is_a_no_op(hook):
    hook.terminate()  # nothing started
    hook.run([hook.python, "-c", "pass"])
    hook.terminate()  # already finished


# --- missing runtime -------------------------------------------------------------------


def test_missing_runtime_names_its_path_and_how_to_create_it(tmp_path):
    hook = RuntimeHook("training", runtimes_dir=str(tmp_path))
    (tmp_path / "training" / "bin").mkdir(parents=True)  # a folder is not an environment
    with pytest.raises(MissingRuntimeError) as info:
        hook.python  # noqa: B018
    assert info.value.name == "training"
    assert str(tmp_path / "training") in str(info.value)
    assert "make runtimes" in str(info.value)


def test_missing_runtime_from_the_configured_runtimes_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__MLOPS__RUNTIMES_DIR", str(tmp_path / "configured"))
    with pytest.raises(MissingRuntimeError, match=str(tmp_path / "configured" / "drift")):
        RuntimeHook("drift").bin("horovodrun")
