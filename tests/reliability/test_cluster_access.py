"""Cluster access: a token-authenticated ``ray start --head`` on 127.0.0.1 (one for the module,
``tests/ray/head.py``) refuses every Jobs API client that lacks the token, and no process of
that Ray listens anywhere but loopback.

Tries: each client refused (``ray job submit`` without the token and with a wrong one, raw HTTP
to the dashboard's jobs endpoint without the header and with a wrong bearer, listing and
submitting), and each listening socket of each process of the head, sampled from its start
until an authorized job has run a Ray task (so that the job's driver, its supervisor actor and
a worker are up too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.ray.head import Head, client_env, is_loopback, job_submit, running_head
from tests.reliability.conftest import FaultLog

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]

WRONG_TOKEN = "0" * 64
SHOULD_NOT_RUN = ["python", "-c", "print('should not run')"]
SUBMISSION = {"entrypoint": "python -c \"print('should not run')\""}
# Runs a task, so that a worker process starts beside the job's driver and supervisor.
A_TASK = [
    "python",
    "-c",
    "import ray, time; ray.init(); "
    "print(ray.get(ray.remote(lambda: 'task ran').remote())); time.sleep(2)",
]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    with running_head(tmp_path_factory.mktemp("head")) as h:
        h.wait_ready()
        h.sample_listening()
        yield h


def _no_job(head: Head) -> None:
    status, body = head.request("/api/jobs/", head.token)
    assert status == 200 and json.loads(body) == [], f"the Jobs API lists: {body}"


def test_the_jobs_api_refuses_every_client_without_the_token(
    head: Head, fault_log: FaultLog, tmp_path: Path
) -> None:
    home = tmp_path / "home"  # no ~/.ray/auth_token of this machine's user is picked up
    home.mkdir()
    clients = {
        "ray job submit without the token": (client_env(home, None, None), "no_token"),
        "ray job submit with a wrong token": (client_env(home, WRONG_TOKEN, "token"), "bad"),
    }
    with ThreadPoolExecutor(len(clients)) as pool:  # a CLI start costs seconds: both at once
        runs = {
            what: pool.submit(
                job_submit,
                head,
                env,
                SHOULD_NOT_RUN,
                120,
                tmp_path / f"{log}.log",
                working_dir=False,
            )
            for what, (env, log) in clients.items()
        }
    refusals = {
        "ray job submit without the token": "Unauthorized: Missing authentication token",
        "ray job submit with a wrong token": "Forbidden: Invalid authentication token",
    }
    http: dict[str, tuple[Callable[[], tuple[int, str]], int]] = {
        "GET /api/jobs/ without the header": (lambda: head.request("/api/jobs/", None), 401),
        "POST /api/jobs/ without the header": (
            lambda: head.request("/api/jobs/", None, post=SUBMISSION),
            401,
        ),
        "GET /api/jobs/ with a wrong bearer": (
            lambda: head.request("/api/jobs/", WRONG_TOKEN),
            403,
        ),
        "POST /api/jobs/ with a wrong bearer": (
            lambda: head.request("/api/jobs/", WRONG_TOKEN, post=SUBMISSION),
            403,
        ),
    }
    with fault_log.tries("Jobs API client without the token") as t:
        for what, future in runs.items():
            with t.attempt(what):
                rc, out = future.result()
                assert rc != 0 and refusals[what] in out, out[-3000:]
                assert "should not run" not in out.replace(" ".join(SHOULD_NOT_RUN), "")
                _no_job(head)
        for what, (call, expected) in http.items():
            with t.attempt(what):
                status, body = call()
                assert status == expected, (status, body[:500])
                _no_job(head)


def test_no_process_of_the_head_listens_beyond_loopback(
    head: Head, fault_log: FaultLog, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with fault_log.tries("Ray port open beyond loopback") as t:
        # Sampled every second while an authorized job runs a task, and once more after.
        rc, out = job_submit(
            head,
            client_env(home, head.token, "token"),
            A_TASK,
            180,
            tmp_path / "job.log",
            working_dir=False,
        )
        assert rc == 0 and "task ran" in out, out[-3000:]
        head.sample_listening()
        programs = set(head.names.values())
        assert {"gcs_server", "raylet"} <= programs, programs
        assert {head.gcs_port, head.dashboard_port} <= {p for _, p, _ in head.listening}
        for ip, port, pid in sorted(head.listening, key=lambda x: (x[2], x[1], x[0])):
            with t.attempt(f"{head.names.get(pid, '?')} (pid {pid}) on {ip}:{port}"):
                assert is_loopback(ip), f"listens on {ip}:{port}, beyond 127.0.0.1/::1"
