"""The stack's supervisor (``scripts/stack.py supervise``) restarts what dies, as a process manager.

Real processes, killed for real, under the real supervisor — with stand-in components instead
of Airflow's (a real Airflow stack costs minutes to start here; ``tests/system/test_stack_restart.py``
kills the real triggerer of the system tests' stack). The stand-in does what the triggerer
does that matters: it starts a log-server child that binds a fixed port and dies when that child
cannot bind it. So a restart after ``kill -9`` of the leader works only if the supervisor killed
the leader's whole process group (the orphaned child holds the port).

No assertion bounds wall-clock time; waits are event-driven polls with generous timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from stack import SUPERVISOR_STATE, Stack, free_port  # noqa: E402

pytestmark = pytest.mark.faults
TIMEOUT = 120


def component_script(tmp: Path) -> Path:
    """A component with a log server: the child binds ``port`` (no SO_REUSEADDR) and writes a
    file named after its pid, holding its leader's pid; the leader dies (exit 3) when it does."""
    script = tmp / "component.py"
    script.write_text(
        "import os, socket, subprocess, sys, time\n"
        "out, port = sys.argv[1], int(sys.argv[2])\n"
        "if sys.argv[3:] == ['log-server']:\n"
        "    server = socket.socket()\n"
        "    server.bind(('127.0.0.1', port))\n"
        "    server.listen()\n"
        "    with open(os.path.join(out, f'log-server-{os.getpid()}'), 'w') as f:\n"
        "        f.write(str(os.getppid()))\n"
        "    while True:\n"
        "        time.sleep(1)\n"
        "child = subprocess.Popen([sys.executable, __file__, out, str(port), 'log-server'])\n"
        "sys.exit(3 if child.wait() else 0)\n"
    )
    return script


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Supervised:
    """``stack.py supervise`` over stand-in components, in a home of its own."""

    def __init__(
        self, home: Path, commands: dict[str, list[str]], env: dict[str, str] | None = None, **spec: Any
    ) -> None:
        self.home = home
        spec = {"commands": commands, **spec}
        self.spec = home / "supervisor-spec.json"
        self.spec.write_text(json.dumps(spec))
        self.log = home / "logs" / "airflow.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "stack.py"), "supervise", str(self.spec)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )

    def state(self) -> dict:
        try:
            return json.loads((self.home / SUPERVISOR_STATE).read_text())["components"]
        except (OSError, ValueError, KeyError):
            return {}

    def wait(self, what: str, done, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            found = done()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not within {timeout}s: {what}; state {self.state()}\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.1)


def log_servers(out: Path) -> dict[int, int]:
    """``{log server pid: its leader's pid}``."""
    return {
        int(p.name.rsplit("-", 1)[1]): int(p.read_text() or 0)
        for p in out.glob("log-server-*")
        if p.read_text()
    }


@pytest.fixture
def supervised(tmp_path):
    started: list[Supervised] = []

    def start(commands, **spec):
        s = Supervised(tmp_path, commands, **spec)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            s.proc.wait(timeout=60)
    Stack(home=tmp_path).stop()  # anything left, by the recorded pids


def test_a_killed_component_is_restarted_after_its_whole_group_is_killed(tmp_path, supervised):
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    s = supervised(
        {
            "triggerer": [sys.executable, str(component_script(tmp_path)), str(out), str(port)],
            # dies at once, every time: restarted with a backoff that doubles up to its bound
            "crashing": [sys.executable, "-c", "import sys; sys.exit(7)"],
        },
        min_backoff=0.2,
        max_backoff=0.8,
        stable_after=30,
    )
    first = s.wait("the triggerer's log server is up", lambda: log_servers(out))
    ((server, leader),) = first.items()
    assert s.state()["triggerer"]["pid"] == leader and s.state()["triggerer"]["restarts"] == 0

    os.kill(leader, signal.SIGKILL)  # the leader only: its log server is orphaned, holding the port
    second = s.wait(
        "a new log server, under a new leader",
        lambda: {k: v for k, v in log_servers(out).items() if k != server},
    )
    ((new_server, new_leader),) = second.items()
    state = s.state()["triggerer"]
    assert new_leader != leader and state["pid"] == new_leader and alive(new_leader)
    assert state["restarts"] == 1 and state["last_exit"] == "killed by SIGKILL"
    assert not alive(server) and not alive(leader)  # the group was killed: the port was free again
    said = s.log.read_text()
    assert f"!!! supervisor: airflow triggerer (pid {leader}) DIED (killed by SIGKILL)" in said
    assert "restart #1" in said

    crashing = s.wait(
        "the crashing component restarted 4 times",
        lambda: s.state()["crashing"]["restarts"] >= 4 and s.state()["crashing"],
    )
    assert crashing["last_exit"] == "exit code 7" and crashing["backoff"] == 0.8  # 0.2, 0.4, 0.8, 0.8
    assert "!!! supervisor: airflow crashing" in s.log.read_text()  # each death said, loudly

    # SIGTERM stops the supervisor and every group under it
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=60) == 0
    assert not alive(new_leader) and not alive(new_server)
    assert list((tmp_path / "pids" / "components").glob("*.json")) == []


def test_stack_stop_stops_the_components_of_a_supervisor_that_was_killed(tmp_path, supervised):
    out = tmp_path / "out"
    out.mkdir()
    s = supervised(
        {"triggerer": [sys.executable, str(component_script(tmp_path)), str(out), str(free_port())]}
    )
    ((server, leader),) = s.wait("the log server is up", lambda: log_servers(out)).items()
    s.proc.kill()  # the supervisor itself: its components run on, recorded by pid
    s.proc.wait()
    assert alive(leader) and alive(server)
    Stack(home=tmp_path).stop()
    assert not alive(leader) and not alive(server)


def heartbeating_script(tmp: Path) -> Path:
    """A component that heartbeats as Airflow's jobs do: a ``running`` row of Airflow's ``job``
    table (same columns) whose ``latest_heartbeat`` it moves every 0.2 s. Its first instance
    stops heartbeating after ``beats`` beats (-1: never) and then hangs, alive; later ones never
    stop."""
    script = tmp / "heartbeating.py"
    script.write_text(
        "import os, sqlite3, sys, time\n"
        "from datetime import datetime, timezone\n"
        "db, job_type, beats = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "first = not os.path.exists(f'{db}.{job_type}')\n"
        "open(f'{db}.{job_type}', 'a').close()\n"
        "now = lambda: datetime.now(timezone.utc).isoformat(sep=' ')\n"
        "con = sqlite3.connect(db, timeout=10, isolation_level=None)\n"
        "con.execute('CREATE TABLE IF NOT EXISTS job (id INTEGER PRIMARY KEY, dag_id TEXT, state TEXT,'\n"
        "            ' job_type TEXT, start_date TEXT, end_date TEXT, latest_heartbeat TEXT,'\n"
        "            ' executor_class TEXT, hostname TEXT, unixname TEXT)')\n"
        'job = con.execute("INSERT INTO job (state, job_type, start_date, latest_heartbeat)"\n'
        "                  \" VALUES ('running', ?, ?, ?)\", (job_type, now(), now())).lastrowid\n"
        "n = 0\n"
        "while True:\n"
        "    if not (first and 0 <= beats <= n):\n"
        "        con.execute('UPDATE job SET latest_heartbeat = ? WHERE id = ?', (now(), job))\n"
        "    n += 1\n"
        "    time.sleep(0.2)\n"
    )
    return script


def test_a_hung_component_whose_heartbeat_stands_still_is_killed_and_restarted(tmp_path, supervised):
    """A scheduler alive but doing nothing (its loop failed; it waits forever in its executor's
    shutdown) is what a process manager watching for deaths never restarts: the supervisor reads
    the component's job heartbeat from the metadata DB and restarts it when it stands still."""
    db = tmp_path / "airflow.db"
    script = heartbeating_script(tmp_path)
    s = supervised(
        {
            "scheduler": [sys.executable, str(script), str(db), "SchedulerJob", "10"],
            "triggerer": [sys.executable, str(script), str(db), "TriggererJob", "-1"],
        },
        job_types={"scheduler": "SchedulerJob", "triggerer": "TriggererJob"},
        database_url=f"sqlite:///{db}",
        hung_after=3,
        check_every=0.2,
        min_backoff=0.2,
        # what the supervisor runs to mark the hung scheduler's job row failed reads this DB
        env={**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}"},
    )
    hung = s.wait("the scheduler running", lambda: s.state().get("scheduler", {}).get("pid"))
    state = s.wait("the scheduler restarted", lambda: s.state()["scheduler"]["pid"] not in (None, hung)
                   and s.state()["scheduler"])  # fmt: skip
    assert state["restarts"] == 1, state
    assert state["last_exit"].startswith("hung (its SchedulerJob heartbeat has not moved for ")
    assert state["last_exit"].endswith("; killed") and not alive(hung)
    assert s.state()["triggerer"]["restarts"] == 0  # it heartbeats: left alone
    said = s.log.read_text()
    assert f"!!! supervisor: airflow scheduler (pid {hung}) HUNG (its SchedulerJob heartbeat" in said
    con = sqlite3.connect(db, timeout=10)
    s.wait(
        "the hung scheduler's job row marked failed",
        lambda: (
            con.execute("SELECT state FROM job WHERE job_type = 'SchedulerJob' ORDER BY id").fetchone()
            == ("failed",)
        ),
    )
    # the new instance heartbeats: it is not restarted again
    job_type = "SchedulerJob"
    name = "scheduler"
    first_beat = s.wait(
        "the new instance's row",
        lambda: con.execute(
            "SELECT latest_heartbeat FROM job WHERE job_type = ? ORDER BY id DESC LIMIT 1", (job_type,)
        ).fetchone(),
    )[0]
    s.wait(
        "the new instance heartbeating",
        lambda: (
            con.execute(
                "SELECT latest_heartbeat FROM job WHERE job_type = ? ORDER BY id DESC LIMIT 1", (job_type,)
            ).fetchone()[0]
            != first_beat
        ),
    )
    rows = con.execute("SELECT COUNT(*) FROM job WHERE job_type = ?", (job_type,)).fetchone()[0]
    assert rows == 2 and s.state()[name]["restarts"] == 1
