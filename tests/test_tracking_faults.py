"""W&B never costs a run: a server that accepts and never answers, or answers with an error, sends the run offline
in one line within seconds; an online init that fails anyway goes on offline; under SLURM only rank 0 keeps the run
id. The servers are stand-ins on 127.0.0.1 that stop themselves."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wandb
from lightning.pytorch.utilities import rank_zero_only

from inception_lab import tracking
from inception_lab.run.files import read_summary
from inception_lab.tracking import INIT_TIMEOUT, PROBE_TIMEOUT, WandbOptions, make_wandb_logger, resolve_mode
from tests.conftest import DIST_ENV, QUICKSTART, REPO, short
from tests.wandb_records import run_info

KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, as a W&B API key
VIEWER = {"data": {"viewer": {"id": "VXNlcjox", "entity": "someone"}}}


@contextlib.contextmanager
def silent_server(lifetime: float = 300.0) -> Iterator[str]:
    """The base URL of a server that accepts every connection and never sends a byte; it closes them all at the
    block's end or after ``lifetime`` seconds, whichever comes first."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        held, deadline = [], time.monotonic() + lifetime
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])
        for conn in held:
            conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)


@contextlib.contextmanager
def answering_server(status: int, body: Any, lifetime: float = 60.0) -> Iterator[tuple[str, list[dict]]]:
    """The base URL of a server that answers every request with ``status`` and JSON ``body``, and the requests it
    got (path, headers, body); it stops at the block's end or after ``lifetime`` seconds."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            requests.append({"path": self.path, "headers": dict(self.headers), "body": data})
            reply = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(lifetime, server.shutdown)
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


@pytest.fixture
def auto_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """W&B as a user has it (CI sets WANDB_MODE=offline): mode auto, the fake key, no netrc file."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    return monkeypatch


def one_line(capsys: pytest.CaptureFixture) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return out[0]


def test_a_server_that_never_answers_sends_the_run_offline_within_seconds(auto_mode, tmp_path, capsys) -> None:
    with silent_server() as url:
        auto_mode.setenv("WANDB_BASE_URL", url)
        start = time.monotonic()
        mode = resolve_mode(WandbOptions(), tmp_path)
        elapsed = time.monotonic() - start
    assert mode == "offline" and os.environ["WANDB_MODE"] == "offline"
    assert elapsed < PROBE_TIMEOUT + 2 < 10
    line = one_line(capsys)
    assert f"{url} did not answer within {PROBE_TIMEOUT:g} s" in line and "wandb sync" in line


@pytest.mark.parametrize(("status", "body", "reason"), [
    (500, {"error": "internal"}, "answered HTTP 500"),
    (401, {"errors": [{"message": "user is not logged in"}]}, "answered HTTP 401"),
    (200, {"errors": [{"message": "permission denied"}], "data": None}, "answered an error (permission denied)"),
    (200, {"data": {"viewer": None}}, "does not know the API key"),
    (200, ["not", "an", "object"], "gave no readable answer"),
])
def test_a_server_that_answers_an_error_sends_the_run_offline(auto_mode, tmp_path, capsys, status, body,
                                                              reason) -> None:
    with answering_server(status, body) as (url, _):
        auto_mode.setenv("WANDB_BASE_URL", url)
        assert resolve_mode(WandbOptions(), tmp_path) == "offline"
    assert f"W&B server {url} {reason}: logging offline to {tmp_path / 'wandb'}" in one_line(capsys)


@pytest.mark.parametrize("key_from", ["env", "netrc"])
def test_a_server_that_knows_the_key_means_online(auto_mode, tmp_path, capsys, key_from) -> None:
    if key_from == "netrc":
        auto_mode.delenv("WANDB_API_KEY")
        (tmp_path / "netrc").write_text(f"machine 127.0.0.1\n  login user\n  password {KEY}\n")
        auto_mode.setenv("NETRC", str(tmp_path / "netrc"))
    with answering_server(200, VIEWER) as (url, requests):
        auto_mode.setenv("WANDB_BASE_URL", url)
        assert resolve_mode(WandbOptions(), tmp_path) == "online"
    assert capsys.readouterr().out == "" and os.environ["WANDB_MODE"] == "online"
    (request,) = requests
    assert request["path"] == "/graphql" and json.loads(request["body"]) == {"query": "{ viewer { id } }"}
    assert request["headers"]["Authorization"] == "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()


class _Init:
    """wandb.init that fails online as wandb 0.31 does against a silent server, and succeeds offline."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(dict(kwargs))
        if kwargs.get("mode") != "offline":
            raise wandb.errors.CommError("Timed out initializing run: POST http://127.0.0.1:9/graphql giving up "
                                         "after 1 attempt(s): context deadline exceeded\nConsider increasing ...")
        return SimpleNamespace(id=kwargs["id"])


@pytest.mark.parametrize("mode", ["auto", "online"])
def test_an_online_init_that_fails_goes_on_offline_in_one_line(auto_mode, tmp_path, capsys, mode) -> None:
    init, teardowns = _Init(), []
    auto_mode.setattr(wandb, "init", init)
    auto_mode.setattr(wandb, "teardown", lambda: teardowns.append(len(init.calls)))
    auto_mode.setattr(tracking, "_probe", lambda *a, **k: None)  # the server answered, then died
    config = SimpleNamespace(wandb=WandbOptions(mode=mode), experiment="quickstart", run_name="r")
    logger = make_wandb_logger(config, tmp_path, {})
    assert os.environ["WANDB_MODE"] == "online"
    assert logger.experiment.id == logger.version
    assert [c["mode"] for c in init.calls] == ["online", "offline"] and teardowns == [1]
    assert init.calls[0]["settings"].init_timeout == INIT_TIMEOUT <= 60
    assert os.environ["WANDB_MODE"] == "offline"
    line = one_line(capsys)
    assert "online wandb.init failed (CommError: Timed out initializing run" in line and "wandb sync" in line


def test_wandb_init_timeout_is_the_users_when_set(auto_mode, tmp_path) -> None:
    auto_mode.setenv("WANDB_MODE", "offline")
    auto_mode.setenv("WANDB_INIT_TIMEOUT", "7")
    config = SimpleNamespace(wandb=WandbOptions(), experiment="quickstart", run_name="r")
    assert make_wandb_logger(config, tmp_path, {})._wandb_init["settings"].init_timeout == 7


_MAKE_LOGGER = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from inception_lab.tracking import WandbOptions, make_wandb_logger
config = SimpleNamespace(wandb=WandbOptions(), experiment="quickstart", run_name="r")
logger = make_wandb_logger(config, Path(sys.argv[1]), {})
print(json.dumps({"id": logger.version}))
"""


@pytest.mark.slow  # real processes, each importing torch and Lightning
def test_under_slurm_only_rank_0_keeps_the_run_id(tmp_path, monkeypatch, capsys) -> None:
    """Two srun tasks (SLURM_PROCID 0 and 1, no RANK/LOCAL_RANK), W&B auto without a key: only rank 0 says it
    logs offline and writes wandb_run.json; rank 1 writes nothing, and reads rank 0's id when it is there."""
    drop = {*DIST_ENV, "WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_RUN_ID", "JSM_NAMESPACE_RANK"}
    base = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    base.update(NETRC=str(tmp_path / "no-netrc"), SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1",
                SLURM_NODEID="0", SLURM_JOB_ID="1234", SLURM_JOB_NAME="train", PYTHONPATH=str(REPO))
    procs = {rank: subprocess.Popen(  # in run directories of their own, at once: rank 1 cannot see rank 0's file
        [sys.executable, "-c", _MAKE_LOGGER, str(tmp_path / f"run{rank}")], cwd=tmp_path, text=True,
        env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)}
    out = {rank: proc.communicate(timeout=600) for rank, proc in procs.items()}
    assert [procs[r].returncode for r in (0, 1)] == [0, 0], out
    (note, printed), (only,) = out[0][0].strip().splitlines(), out[1][0].strip().splitlines()
    assert "no W&B API key" in note and "wandb sync" in note
    assert json.loads((tmp_path / "run0/wandb_run.json").read_text()) == json.loads(printed)
    assert list((tmp_path / "run1").iterdir()) == [] and json.loads(only)["id"]

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    config = SimpleNamespace(wandb=WandbOptions(), experiment="quickstart", run_name="r")
    logger = make_wandb_logger(config, tmp_path / "run0", {})
    assert logger.version == json.loads(printed)["id"] and capsys.readouterr().out == ""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "online"])
def test_a_fit_beside_a_silent_wandb_server_finishes_offline(tmp_path, mode) -> None:
    """The real CLI, W&B as a user has it, a server that accepts and never answers: ``auto`` gives up after the
    probe; ``online`` (forced: no probe) after wandb.init's timeout (4 s here, not INIT_TIMEOUT, to keep the test
    short). Either way the fit finishes, logged offline. No wall-clock bound (a slow machine is not a defect): in
    ``auto`` wandb.init's timeout is set past the process's own, so a fit that tried the silent server online, or a
    probe that waited on it, would not finish at all."""
    run_dir = tmp_path / "r"
    env = {k: v for k, v in os.environ.items() if k not in {*DIST_ENV, "WANDB_MODE", "WANDB_INIT_TIMEOUT"}}
    env["WANDB_INIT_TIMEOUT"] = "4" if mode == "online" else "600"
    with silent_server() as url:
        env.update(WANDB_BASE_URL=url, WANDB_API_KEY=KEY, NETRC=str(tmp_path / "netrc"), PYTHONUNBUFFERED="1")
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "inception_lab", "fit", "--config", str(QUICKSTART),
             *short(batches=2, val_batches=1), f"--wandb.mode={mode}",
             "--run_dir", str(run_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - start
    print(f"fit beside a silent W&B server, mode {mode}: {elapsed:.1f} s")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "Traceback" not in output
    notes = [line for line in proc.stdout.splitlines() if "logging offline to" in line]
    assert len(notes) == 1 and ("did not answer within" if mode == "auto" else "online wandb.init failed") in notes[0]
    assert read_summary(run_dir)["status"] == "finished"
    info = run_info(run_dir)  # one offline-run-* under <run dir>/wandb, holding the run's config and metrics
    assert info["id"] == json.loads((run_dir / "wandb_run.json").read_text())["id"]
    assert info["config"]["trainer"]["max_epochs"] == 1 and "val/acc_best" in info["summary"]
