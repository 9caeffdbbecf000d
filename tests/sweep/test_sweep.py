"""The ``sweep`` command (sweep/main.py): one sweep directory holds one sweep (its sweep file, its seed),
decided under its state's lock even when two start at once; a runner of other programs than the CLI imports no
torch."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inception_lab.__main__ import main as lab_main
from tests.conftest import (
    QUICKSTART,
    REPO,
    clean_env,
    fit_command,
    one_error_line,
    read_state,
    state_trials,
    write_sweep,
)
from tests.sweep.conftest import FAKE_TRIAL, executions, fake_sweep, start_runner


def test_a_sweep_file_with_new_comments_continues_its_directory(tmp_path: Path, cli: Any) -> None:
    """The sweep directory holds the sweep as first run: a sweep file whose comments changed since (its protocol
    header, its timings) is the same sweep; one whose values changed is refused, naming both files."""
    path = tmp_path / "s.yaml"
    command = fit_command(experiment=QUICKSTART, cli=("python", "-m", "inception_lab"))
    write_sweep(path, {"seed_everything": {"values": [0, 1]}}, command, header="# measured: 1 min\n")
    out = tmp_path / "out"
    assert cli(["sweep", str(path), "--out", str(out), "--dry-run"])[0] == 0
    out.mkdir(exist_ok=True)
    (out / "sweep.yaml").write_text(path.read_text())
    write_sweep(path, {"seed_everything": {"values": [0, 1]}}, command, header="# measured again: 2 min\n")
    code, _, err = cli(["sweep", str(path), "--out", str(out), "--dry-run"])
    assert code == 0, err
    write_sweep(path, {"seed_everything": {"values": [0, 1, 2]}}, command)
    code, _, err = cli(["sweep", str(path), "--out", str(out), "--dry-run"])
    assert f"{out} holds a different sweep ({out / 'sweep.yaml'} differs from {path})" in one_error_line(code, err,
                                                                                                          "sweep")


def test_a_sweep_directory_keeps_its_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A random sweep's trials are drawn with its seed: the same directory with another --seed is one line (it used
    to go on silently with the old seed); the same command carries on; a trial whose values are not its draw's is
    one line."""
    path = fake_sweep(tmp_path, sleep=0.0, method="random", run_cap=2,
                      parameters={"a": {"distribution": "uniform", "min": 0.0, "max": 1.0}})
    out = tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]) == 0
    capsys.readouterr()
    code, err = lab_main(["sweep", str(path), "--out", str(out), "--seed", "2"]), capsys.readouterr().err
    assert one_error_line(code, err, "sweep") == err.strip() == (
        f"inception_lab sweep: error: {out / 'state.json'}: this sweep draws its trials with --seed 1; pass the same "
        "--seed (not 2), or --out DIR for a new sweep directory")
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]) == 0
    state = read_state(out)
    state["trials"][1]["values"]["a"] = 0.5
    (out / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    code, err = lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]), capsys.readouterr().err
    assert one_error_line(code, err, "sweep") == err.strip() == (
        f"inception_lab sweep: error: {out / 'state.json'}: trial {state['trials'][1]['name']} has other values than "
        "the sweep file gives it")


def test_a_broken_copy_of_the_sweep_file_is_one_line(tmp_path: Path, capsys) -> None:
    path, out = fake_sweep(tmp_path, sleep=0.0, run_cap=1), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    (out / "sweep.yaml").write_text("method: grid\nparameters: {a: [1\n")
    capsys.readouterr()
    code, err = lab_main(["sweep", str(path), "--out", str(out)]), capsys.readouterr().err
    line = one_error_line(code, err, "sweep")
    assert line == err.strip() and line.startswith(f"inception_lab sweep: error: {out / 'sweep.yaml'}: invalid YAML")


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_one_directory(tmp_path: Path) -> None:
    """Two sweep files with the same values and other commands, their runners started at once on one sweep
    directory (both held at its state's lock, then let go together): one runs every trial, the other is refused in
    one line, decided under the lock (both used to run and split the trials between them)."""
    paths = []
    for who in "AB":
        (tmp_path / who).mkdir()
        paths.append(fake_sweep(tmp_path / who, sleep=0.0, command=[
            "python", "-c", FAKE_TRIAL.replace("{sleep}", "0"), f"--who={who}", "${args}", "${args_json_file}"]))
    out = tmp_path / "out"
    out.mkdir()
    # a shared lock on state.json: both runners read it and pass the early check, then wait to write it (exclusive)
    hold = ("import sys, time; from inception_lab.run.lock import PathLock; "
            "lock = PathLock(sys.argv[1], shared=True); assert lock.acquire(0); print('held', flush=True); "
            "time.sleep(600)")
    (out / "state.json").touch()
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / "state.json")], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    logs = ["", ""]

    def read(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            logs[i] += line

    try:
        assert holder.stdout.readline() == "held\n"
        procs = [start_runner(path, out, wandb="disabled") for path in paths]
        readers = [threading.Thread(target=read, args=(i, p), daemon=True) for i, p in enumerate(procs)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 600
        while not all("validating" in log for log in logs):  # both past the early check: the lock decides
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), logs
            time.sleep(0.1)
    finally:
        holder.kill()
    for proc, reader in zip(procs, readers):
        proc.wait(timeout=600)
        reader.join(timeout=60)
    assert sorted(p.returncode for p in procs) == [0, 2], logs
    won = [p.returncode for p in procs].index(0)
    lost = 1 - won
    assert all("validating 6 trial config(s)" in log for log in logs), logs  # both went past the early check
    assert one_error_line(procs[lost].returncode, logs[lost], "sweep") == (
        f"inception_lab sweep: error: {out} holds a different sweep ({out / 'sweep.yaml'} differs from "
        f"{paths[lost]}): pass --out DIR for a new sweep directory, or delete the old one")
    assert (out / "sweep.yaml").read_text() == paths[won].read_text()
    assert [(t["status"], t["starts"]) for t in state_trials(out)] == [("finished", 1)] * 6
    runs = executions(out)
    assert len(runs) == 6 and all(len(r) == 1 and f"--who={'AB'[won]}" in r[0] for r in runs.values()), runs


def test_a_runner_of_other_programs_imports_no_torch(tmp_path: Path) -> None:
    """The runner reads and writes run records without torch or Lightning (2 s to start, not 12): only checking
    trials of the inception_lab CLI imports them."""
    path, out = fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    code = ("import sys; from inception_lab.sweep.main import main; code = main([sys.argv[1], '--out', sys.argv[2]]); "
            "print(code, *(m in sys.modules for m in ('torch', 'lightning')))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(out)], cwd=REPO,
                          env={**clean_env(), "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [t["status"] for t in state_trials(out)] == ["finished"] * 6


def test_the_last_line_says_what_the_sweep_did_and_what_next(tmp_path: Path, cli: Any) -> None:
    """sweep's last stdout line: its directory, its trials finished and failed, and the command to run next; a dry
    run's: the trials it would run; --quiet keeps that line alone (nothing on stderr)."""
    path, out = fake_sweep(tmp_path, sleep=0.0, parameters={"a": {"values": [1, 2, "x"]}}), tmp_path / "out"  # x fails
    dry = f"sweep many: dry run: {{}} of 3 trials to run into {out}, all valid; nothing started, nothing written"
    code, stdout, _ = cli(["sweep", str(path), "--out", str(out), "--dry-run"])
    assert code == 0 and stdout.splitlines()[-1] == dry.format(3) and "--a=x" in stdout  # after the trials
    assert cli(["sweep", str(path), "--out", str(out), "--quiet"], cwd=REPO) == (1, (
        f"sweep many: {out}: 2 of 3 trials finished, 1 failed (--retry-failed runs them again); next: python -m "
        f"inception_lab compare {out}\n"), "")
    assert cli(["sweep", str(path), "--out", str(out), "--dry-run"])[1].splitlines()[-1] == dry.format(0)
    code, stdout, _ = cli(["sweep", str(path), "--out", str(out), "--dry-run", "--retry-failed"])
    assert stdout.splitlines()[-1] == dry.format(1)
