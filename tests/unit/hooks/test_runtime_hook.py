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
            _wait_for(lambda: any(e["event"] == "[child] ready" for e in list(events)), 60, "the first line")
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


SECRETS = {
    "AIRFLOW_CONN_SECRET_X": "postgresql://admin:hunter2@db/prod",
    "AIRFLOW__CORE__FERNET_KEY": "cNNnrX2AbW3x8xsVD5rWvNpMmRsUsyOyoRpODsuNJ6o=",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:secret@db/airflow",
    "AIRFLOW_VAR_API_KEY": "k",
    "MLFLOW_TRACKING_TOKEN": "a-token-of-some-other-connection",
    "SOME_SERVICE_PASSWORD": "p",
}


def test_child_gets_only_the_allowed_part_of_the_environment(hook, monkeypatch):
    """Airflow's secrets (connections, Fernet key, DB URL) and anything unknown stay in the worker."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    allowed = {"LANG": "C.UTF-8", "TZ": "UTC", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "NO_PROXY": "127.0.0.1", "https_proxy": "http://proxy:3128"}  # fmt: skip
    for name, value in allowed.items():
        monkeypatch.setenv(name, value)
    script = "import json, os; print(json.dumps(dict(os.environ)))"

    (line,) = hook.run([hook.python, "-c", script], env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})

    child = json.loads(line)
    assert not set(SECRETS) & set(child), sorted(set(SECRETS) & set(child))
    assert not [k for k in child if k.startswith("AIRFLOW")]
    assert {k: child.get(k) for k in allowed} == allowed
    assert child["HOME"] == os.environ["HOME"]
    assert child["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # what the caller passes explicitly


def test_each_runtime_gets_what_its_programs_read():
    from airflow_mlops.hooks.runtime import runtime_environ

    source = {
        **SECRETS,
        "PATH": "/usr/bin",
        "HOROVOD_GLOO_TIMEOUT_SECONDS": "60",
        "NCCL_DEBUG": "INFO",
        "MLFLOW_S3_ENDPOINT_URL": "http://s3:9000",
        "MLFLOW_TRACKING_URI": "http://not-the-connection:5000",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "SELDON_BIND_HOST": "0.0.0.0",
        "NUMBA_CACHE_DIR": "/tmp/numba",
    }
    training = runtime_environ("training", "/rt/training/bin", source=source)
    assert training["PATH"] == f"/rt/training/bin{os.pathsep}/usr/bin"
    passed = {"HOROVOD_GLOO_TIMEOUT_SECONDS", "NCCL_DEBUG", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"}
    assert passed <= set(training)
    # the tracking URI and credentials come from the MLflow connection, never from the worker
    assert "MLFLOW_TRACKING_URI" not in training and "MLFLOW_TRACKING_TOKEN" not in training
    assert not set(SECRETS) & set(training)
    drift = runtime_environ("drift", source=source)
    assert set(drift) == {"PATH", "PYTHONUNBUFFERED", "NUMBA_CACHE_DIR"}
    serving = runtime_environ("serving", source=source, passthrough=["EXTRA_KNOB", "MY_"])
    assert "SELDON_BIND_HOST" in serving and "AWS_ACCESS_KEY_ID" not in serving
    assert "EXTRA_KNOB" not in serving  # not in the source: nothing invented
    extra = runtime_environ(
        "serving", source={"MY_X": "1", "EXTRA_KNOB": "2"}, passthrough=["EXTRA_KNOB", "MY_"]
    )
    assert extra == {"MY_X": "1", "EXTRA_KNOB": "2", "PYTHONUNBUFFERED": "1"}


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
    with pytest.raises(RuntimeCommandError) as info:
        hook.run([hook.python, "-c", script])
    assert str(info.value).startswith("RuntimeError: CUDA error: out of memory\n(raised in rank 1; ")


def test_failure_names_an_error_followed_by_more_than_200_lines(hook):
    script = "import sys\nprint('ValueError: bad input')\nfor i in range(300): print(i)\nsys.exit(2)"
    with pytest.raises(RuntimeCommandError, match="ValueError: bad input"):
        hook.run([hook.python, "-c", script])


def test_run_stops_a_command_that_exceeds_its_timeout(hook, tmp_path):
    """No wall-clock bound here (timings belong in bench/): the command would sleep for 10 minutes."""
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    with pytest.raises(RuntimeCommandError, match="did not finish within 0s"):
        hook.run([hook.python, "-c", script], timeout=0.3)
    if pid_file.exists():  # it may be stopped before it got that far
        assert not _alive(int(pid_file.read_text()))


# --- the failure message leads with the exception (whatever its class) -------------------

#: a stand-in for ``horovodrun --gloo``: runs the worker scripts given as arguments, relays their
#: output line by line as ``[rank]<stdout|stderr>:...``, reports each exit as Horovod does, then
#: fails with Horovod's own RuntimeError traceback
MINI_LAUNCHER = _py(
    """
    import queue, subprocess, sys, threading

    out = threading.Lock()

    def say(text):
        with out:
            sys.stdout.write(text + "\\n")
            sys.stdout.flush()

    def relay(rank, stream, name):
        # one write per line, as Horovod's forward_stream does: print() writes the text and the
        # newline separately, so two relay threads could splice their lines together
        for line in stream:
            say(f"[{rank}]<{name}>:{line.rstrip()}")

    def watch(rank, proc, threads):
        for t in threads:
            t.join()
        exits.put((rank, proc.wait()))

    exits = queue.Queue()
    for rank, code in enumerate(sys.argv[1:]):
        proc = subprocess.Popen(
            [sys.executable, code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        threads = [threading.Thread(target=relay, args=(rank, proc.stdout, "stdout")),
                   threading.Thread(target=relay, args=(rank, proc.stderr, "stderr"))]
        for t in threads:
            t.start()
        threading.Thread(target=watch, args=(rank, proc, threads)).start()
    failed = None
    for _ in sys.argv[1:]:
        rank, code = exits.get()  # in the order the workers end, as Horovod reports them
        say(f"Process {rank} exit with status code {code}.")
        if code and failed is None:
            failed = rank
    for i in range(30):
        say(f"shutting down {i}")
    if failed is not None:
        raise RuntimeError(
            "Horovod detected that one or more processes exited with non-zero status, thus causing "
            f"the job to be terminated. The first process to do so was:\\nProcess name: {failed}"
        )
    """
)

#: a module whose exception class is neither ``...Error`` nor ``...Exception``, like pyarrow's
ARROW_LIKE = _py(
    """
    import sys, types

    lib = types.ModuleType("pyarrow.lib")
    class ArrowInvalid(ValueError):
        pass
    ArrowInvalid.__module__ = "pyarrow.lib"
    lib.ArrowInvalid = ArrowInvalid

    def read_table(path):
        raise lib.ArrowInvalid(f"Could not open Parquet input source '{path}': Parquet magic bytes not found")

    def train():
        print("epoch 0", flush=True)
        read_table("/data/train.parquet")

    train()
    """
)


def _failure(hook, tmp_path: Path, *worker_codes: str) -> str:
    """The failure message of the mini launcher running one script per rank."""
    scripts = []
    for rank, code in enumerate(worker_codes):
        scripts.append(tmp_path / f"rank{rank}.py")
        scripts[-1].write_text(code)
    with pytest.raises(RuntimeCommandError) as info:
        hook.run([hook.python, "-c", MINI_LAUNCHER, *scripts])
    return str(info.value)


def test_a_dotted_exception_without_error_in_its_name_leads_the_message(hook, tmp_path):
    ok = "import time; time.sleep(0.5); print('rank 1 done')"
    message = _failure(hook, tmp_path, ARROW_LIKE, ok)

    first, second, *rest = message.splitlines()
    assert first == (
        "pyarrow.lib.ArrowInvalid: Could not open Parquet input source '/data/train.parquet': "
        "Parquet magic bytes not found"
    )
    assert second.startswith("(raised in rank 0; python in the demo runtime exited with status 1")
    body = "\n".join(rest)
    # its last frames, the user's function among them, before the launcher's error
    assert 'in train\n    read_table("/data/train.parquet")' in body
    assert "in read_table\n    raise lib.ArrowInvalid" in body
    assert body.index("in read_table") < body.index("Horovod detected")
    assert "Other errors:\n  python: RuntimeError: Horovod detected" in body
    assert "rank 0 exited with status 1" in body
    # the end of the output stops where the launcher's own traceback (named above) begins
    last_output = body[body.index("Last output:") :]
    assert "shutting down 29" in last_output and "Traceback" not in last_output


def test_a_custom_exception_class_of_any_name(hook, tmp_path):
    boom = "class Boom(Exception):\n    pass\n\ndef step():\n    raise Boom()\n\nstep()\n"
    message = _failure(hook, tmp_path, "import time; time.sleep(0.3)", boom)
    assert message.splitlines()[0] == "Boom"
    assert "(raised in rank 1; " in message
    assert "in step\n    raise Boom()\nBoom\n" in message


def test_a_multi_line_message_and_chained_exceptions(hook, tmp_path):
    code = _py(
        """
        class ConfigProblem(Exception):
            pass

        def load(inputs):
            try:
                return inputs["holdout"]
            except KeyError as err:
                problem = "no 'holdout' input\\n  inputs given: ['train']\\n  add it to inputs="
                raise ConfigProblem(problem) from err

        def train():
            try:
                load({"train": "x"})
            except ConfigProblem:
                {}.pop("cleanup")

        train()
        """
    )
    message = _failure(hook, tmp_path, code)
    lines = message.splitlines()
    # the exception that ended the process (raised while handling the others) leads
    assert lines[0] == "KeyError: 'cleanup'"
    assert "While handling:" in message and "Caused by:" in message
    handled = message[message.index("While handling:") :]
    assert "ConfigProblem: no 'holdout' input\n  inputs given: ['train']\n  add it to inputs=" in handled
    caused = message[message.index("Caused by:") :]
    assert "KeyError: 'holdout'" in caused and 'return inputs["holdout"]' in caused


def test_the_rank_horovod_names_first_wins_over_later_errors(hook, tmp_path):
    """Rank 1 fails first; rank 0 then fails on the broken collective (its error is a consequence)."""
    first = _py(
        """
        import sys
        sys.stderr.write(
            'Traceback (most recent call last):\\n'
            '  File "/job/train.py", line 3, in train\\n'
            'ValueError: bad batch\\n'
        )
        sys.exit(1)
        """
    )
    later = "import time; time.sleep(1.5); raise ConnectionResetError('Gloo: connection closed by peer')"
    message = _failure(hook, tmp_path, later, first)
    assert message.startswith("ValueError: bad batch\n(raised in rank 1; ")
    assert "rank 0: ConnectionResetError: Gloo: connection closed by peer" in message


def test_only_the_launchers_error_when_no_rank_raised(hook, tmp_path):
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    message = _failure(hook, tmp_path, killed)
    assert message.startswith("RuntimeError: Horovod detected that one or more processes exited")
    assert "(raised by python; " in message
    assert f"rank 0 exited with status {-signal.SIGKILL}" in message


def test_the_scanner_keeps_bounded_memory_on_endless_tracebacks():
    from airflow_mlops.hooks.runtime import OutputScanner

    scanner = OutputScanner("horovodrun")
    for i in range(2000):
        scanner.feed("[0]<stderr>:Traceback (most recent call last):")
        for j in range(50):
            scanner.feed(f'[0]<stderr>:  File "/job/train.py", line {j}, in f{j}')
            scanner.feed(f"[0]<stderr>:    f{j + 1}()")
        scanner.feed(f"[0]<stderr>:RecursionError: round {i}")
    stream = scanner._streams["rank 0"]
    assert len(stream.chain) == 1 and len(stream.chain[-1].frames) <= 6
    assert len(scanner.tail) == 200
    message = scanner.explain("horovodrun exited with status 1", lead=True)
    assert message.startswith("RecursionError: round 1999\n")
    assert "Traceback (most recent call last; 44 more frame(s) not shown):" in message


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
        _wait_for(pids_file.exists, 60, "the command to start its child")
        pids = json.loads(pids_file.read_text())
        assert all(_alive(pid) for pid in pids)

        hook.terminate(grace=5)
        thread.join(60)

        assert not thread.is_alive(), "run() did not return after terminate()"
        _wait_for(lambda: not any(_alive(pid) for pid in pids), 30, "the process tree to exit")
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
        _wait_for(pid_file.exists, 60, "the command to start")
        pid = int(pid_file.read_text())
        hook.terminate(grace=0.5)
        thread.join(60)
        assert not _alive(pid)
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
