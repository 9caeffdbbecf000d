"""sweep/runner.py: trials run, resumed and recorded: a fake CLI's interrupted trial resumes from its last
checkpoint; bayes and hyperband through the engine; real sweeps on the digits (a SIGKILL of the runner, a crashing
trial, Ctrl-C; two trials at once: tests/compare/test_compare.py's real sweep); many runners on one sweep directory,
one of them dead or stopped past its lease; a SLURM array task requeued only by the time limit's warning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from inception_lab.__main__ import main as lab_main
from inception_lab.sweep import runner, spec
from tests.conftest import (
    QUICKSTART,
    REPO,
    clean_env,
    fit_command,
    in_process,
    probe_path,
    read_state,
    short,
    state_trials,
    write_run,
    write_sweep,
)
from tests.sweep.conftest import executions, fake_sweep, start_runner, starts_logged, tiny_sweep


def test_interrupted_trial_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    """A fake CLI behind the real runner, named as W&B's ``${interpreter} ${program}`` names the CLI (its
    ``inception_lab/__main__.py``; it records its argv and writes a finished summary.json): a trial interrupted after
    a checkpoint resumes, one that finished meanwhile is kept, a new one starts."""
    program = tmp_path / "inception_lab" / "__main__.py"
    program.parent.mkdir()
    program.write_text("import json, pathlib, sys; d = pathlib.Path(sys.argv[sys.argv.index('--run_dir') + 1]); "
                       "(d / 'argv.json').write_text(json.dumps(sys.argv)); "
                       "(d / 'summary.json').write_text(json.dumps({'status': 'finished', 'metrics': "
                       "{'val/acc_best': 0.5}}))")
    path = write_sweep(tmp_path / "fake.yaml", {"seed_everything": {"values": [1, 2, 3]}},
                       fit_command(experiment=QUICKSTART, cli=("${env}", "${interpreter}", "${program}")),
                       program=str(program))
    out = tmp_path / "out"
    names = ["000-seed1", "001-seed2", "002-seed3"]
    # the state a SIGKILL leaves: one trial finished, one interrupted after a checkpoint, one not started
    (out / "runs" / names[1] / "checkpoints").mkdir(parents=True)
    (out / "runs" / names[1] / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_run(out / "runs" / names[1], status="running")
    write_run(out / "runs" / names[0], status="finished", metrics={"val/acc_best": 0.9})
    (out / "sweep.yaml").write_text(path.read_text())
    (out / "state.json").write_text(json.dumps({"seed": 0, "trials": [
        {"name": names[0], "values": {"seed_everything": 1}, "status": "running", "starts": 1},
        {"name": names[1], "values": {"seed_everything": 2}, "status": "running", "starts": 1}]}))
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    trials = state_trials(out)
    assert [(t["status"], t["starts"]) for t in trials] == [("finished", 1), ("finished", 2), ("finished", 1)]
    assert trials[0]["metrics"] == {"val/acc_best": 0.9}  # finished while the runner was dead: kept
    assert not (out / "runs" / names[0] / "argv.json").exists()
    resumed = json.loads((out / "runs" / names[1] / "argv.json").read_text())
    assert resumed[0] == str(program) and resumed[-2:] == ["--ckpt_path", "last"]
    fresh = json.loads((out / "runs" / names[2] / "argv.json").read_text())
    assert fresh == [str(program), "fit", "--config", str(QUICKSTART), "--config",
                     str(out / "runs" / names[2] / "args.json"), "--run_dir", str(out / "runs" / names[2]),
                     "--wandb.group", "fake"]


def test_bayes_draws_are_seeded_and_hyperband_is_asked(tmp_path: Path, engine: Any) -> None:
    """Bayes search and hyperband through the engine, behind a fake trial program that logs three epochs."""
    program = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[-1]).parent; "
               "lr = float(next(a for a in sys.argv if a.startswith('--lr=')).split('=')[1]); "
               "rows = ''.join(f'{e},{lr * e}\\n' for e in (1, 2, 3)); "
               "(d / 'metrics.csv').write_text('epoch,val/acc_best\\n' + rows); "
               "summary = {'status': 'finished', 'metrics': {'val/acc_best': 3 * lr}}; "
               "(d / 'summary.json').write_text(json.dumps(summary))")
    path = write_sweep(tmp_path / "b.yaml", {"lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 0.1}},
                       ["python", "-c", program, "${args}", "${args_json_file}"], method="bayes", run_cap=3,
                       early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2})
    calls: list[int] = []
    real = spec.hyperband_stops
    with pytest.MonkeyPatch.context() as m:
        m.setattr(spec, "hyperband_stops", lambda s, t: calls.append(len(t)) or real(s, t))
        assert lab_main(["sweep", str(path), "--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert calls  # asked after every poll
    assert lab_main(["sweep", str(path), "--out", str(tmp_path / "b"), "--seed", "5"]) == 0
    runs = [state_trials(tmp_path / d) for d in "ab"]
    assert [t["values"] for t in runs[0]] == [t["values"] for t in runs[1]] and len(runs[0]) == 3
    assert all(t["status"] == "finished" and t["name"].startswith(f"{i:03d}-lr=") for i, t in enumerate(runs[0]))


@pytest.mark.slow
def test_runner_survives_sigkill_and_records_a_crash(tmp_path: Path) -> None:
    """SIGKILL the runner once a trial finished; start it again: nothing finished runs twice, all trials end; a
    GPU accelerator on this CPU machine passes validation (which builds no trainer) but fails when the fit starts:
    recorded with its error tail. W&B is off here (the test above logs offline): a trial's W&B start and finish cost
    seconds."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the crashing trial would not crash")
    path = tiny_sweep(tmp_path, "kill", {"trainer.accelerator": {"values": ["cpu", "auto", "gpu"]},
                                         "seed_everything": {"value": 0}})
    out = tmp_path / "sweep"
    proc = start_runner(path, out, wandb="disabled")
    deadline = time.monotonic() + 600
    while not any(t["status"] == "finished" for t in state_trials(out)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    first = next(t for t in state_trials(out) if t["status"] == "finished")
    summary_file = out / "runs" / first["name"] / "summary.json"
    before = (summary_file.stat().st_mtime_ns, summary_file.read_text())
    while not any(t["status"] == "running" and (out / "runs" / t["name"] / "trial.log").is_file()
                  and starts_logged(out, t["name"]) for t in state_trials(out)):  # the next trial is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    time.sleep(1.0)  # its fit starting
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    time.sleep(1.0)
    orphans = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(out / "runs"))]
    assert not orphans, "a trial outlived its runner"

    proc = start_runner(path, out, "--parallel", "2", wandb="disabled")  # the interrupted trial beside the crashing one
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, log  # a trial failed
    state = read_state(out)
    by_name = {t["name"]: t for t in state["trials"]}
    assert [t["status"] for t in state["trials"]] == ["finished", "finished", "failed"]
    assert by_name[first["name"]]["starts"] == 1 == starts_logged(out, first["name"])
    assert (summary_file.stat().st_mtime_ns, summary_file.read_text()) == before
    assert by_name[first["name"]]["metrics"] == json.loads(before[1])["metrics"]
    interrupted = state["trials"][1]
    assert interrupted["starts"] == 2 == starts_logged(out, interrupted["name"])
    crashed = state["trials"][2]
    assert crashed["returncode"] != 0 and "No supported gpu backend found" in crashed["error"]
    assert len(crashed["error"].splitlines()) <= runner.ERROR_TAIL_LINES + 1
    assert f"failed {crashed['name']}" in log


def _cmdline_has(proc_dir: Path, needle: str) -> bool:
    try:
        return needle in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_interrupts_a_sweep_and_the_restart_resumes(tmp_path: Path) -> None:
    """Ctrl-C on the runner: the trial in flight is recorded "interrupted" (not failed) and the runner exits 130;
    the same command again resumes that trial from its last.ckpt and runs the rest. Every trial finishes, with as
    many epochs trained in total as an uninterrupted sweep, plus at most the one that was in flight."""
    path = tiny_sweep(tmp_path, "ctrlc", {"seed_everything": {"values": [0, 1]}, "trainer.max_epochs": {"value": 2},
                                          "trainer.limit_train_batches": {"value": 3}})
    out = tmp_path / "sweep"
    proc = start_runner(path, out, wandb="disabled")
    last = out / "runs/000-seed0/checkpoints/last.ckpt"
    deadline = time.monotonic() + 600
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends it
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "interrupted; run the same command again" in log, log
    assert [t["status"] for t in state_trials(out)] == ["interrupted", "pending"]
    first = json.loads((out / "runs/000-seed0/summary.json").read_text())
    assert first["status"] == "interrupted" and first["error"] == "interrupted by SIGTERM"  # the runner's stop

    proc = start_runner(path, out, wandb="disabled")
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log
    state = read_state(out)
    assert [(t["status"], t["starts"]) for t in state["trials"]] == [("finished", 2), ("finished", 1)]
    attempts = {t["name"]: json.loads((out / "runs" / t["name"] / "summary.json").read_text())["attempts"]
                for t in state["trials"]}
    assert [a["status"] for a in attempts["000-seed0"]] == ["interrupted", "finished"]
    assert attempts["000-seed0"][1]["first_epoch"] >= 1  # resumed, not trained again from epoch 0
    assert 2 * 2 <= sum(a["epochs"] for runs in attempts.values() for a in runs) <= 2 * 2 + 1
    starts = [ln for ln in (out / "runs/000-seed0/trial.log").read_text().splitlines() if ln.startswith("# start")]
    assert ["--ckpt_path last" in ln for ln in starts] == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("runners", [2])  # three: test_three_runners_on_a_real_sweep
def test_runners_share_a_sweep_directory(tmp_path: Path, runners: int) -> None:
    """Several runners started at once on one sweep directory: every trial runs once, in one of them, and is
    recorded finished once (each trial claimed under the state's lock before it starts)."""
    path, out = fake_sweep(tmp_path, sleep=1.0), tmp_path / "out"
    procs = [start_runner(path, out, wandb="disabled") for _ in range(runners)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * runners, logs
    state = read_state(out)
    assert [(t["status"], t["starts"], t["owner"]) for t in state["trials"]] == [("finished", 1, None)] * 6
    assert {name: len(runs) for name, runs in executions(out).items()} == {t["name"]: 1 for t in state["trials"]}
    started = [line for log in logs for line in log.splitlines() if " start " in line]
    assert len(started) == 6 and sum(bool(" start " in log) for log in logs) >= 2  # shared, not one runner's


@pytest.mark.slow
def test_a_dead_runners_trial_is_claimed_and_resumed(tmp_path: Path) -> None:
    """SIGKILL one of two runners mid-trial: the other carries on; a runner started afterwards claims the dead one's
    trial (its pid is gone) and runs it again in its run directory; every trial finishes once."""
    path, out = fake_sweep(tmp_path, sleep=4.0), tmp_path / "out"
    a = start_runner(path, out, wandb="disabled")
    deadline = time.monotonic() + 600
    while not any(t["status"] == "running" for t in state_trials(out)):
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()[0]
        time.sleep(0.1)
    b = start_runner(path, out, wandb="disabled")
    time.sleep(1.5)  # a's trial is under way
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=120)
    log_b = b.communicate(timeout=600)[0]
    assert b.returncode == 0, log_b
    state = read_state(out)
    killed = next(t for t in state["trials"] if t["starts"] == 2)  # a's: reclaimed by b, or by c below
    c = start_runner(path, out, wandb="disabled")
    log_c = c.communicate(timeout=600)[0]
    assert c.returncode == 0, log_c
    state = read_state(out)
    assert [t["status"] for t in state["trials"]] == ["finished"] * 6
    runs = executions(out)
    assert len(runs[killed["name"]]) == 2 and runs[killed["name"]][1] == runs[killed["name"]][0]  # as the agent
    # would run it again: another program than the CLI gets no --ckpt_path (its directory and record are kept)
    assert all(len(r) == 1 for name, r in runs.items() if name != killed["name"])


@pytest.mark.slow
def test_bayes_run_cap_holds_across_runners(tmp_path: Path, engine: Any) -> None:
    """Two runners on a bayes sweep with run_cap 4: each draws under the lock given every result: exactly 4 trials,
    no index twice."""
    path = fake_sweep(tmp_path, sleep=0.5, method="bayes", run_cap=4,
                      parameters={"a": {"distribution": "uniform", "min": 0.0, "max": 1.0}})
    out = tmp_path / "out"
    procs = [start_runner(path, out, wandb="disabled") for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = state_trials(out)
    assert len(trials) == 4 and [t["name"][:3] for t in trials] == ["000", "001", "002", "003"]
    assert all(t["status"] == "finished" and t["starts"] == 1 for t in trials)
    assert sorted(executions(out)) == sorted(t["name"] for t in trials)


@pytest.mark.slow
def test_three_runners_on_a_real_sweep(tmp_path: Path) -> None:
    """Three runners at once on a 4-trial digits sweep (one short epoch a trial, one thread each): every trial
    finished exactly once, with its own config and metrics; no trial failed (the same trial run in two runners at once
    used to fail on each other's files)."""
    path = tiny_sweep(tmp_path, "three", {"model.net.init_args.head": {"values": ["gap", "fc"]},
                                          "seed_everything": {"values": [0, 1]},
                                          "trainer.limit_train_batches": {"value": 2}})
    out = tmp_path / "sweep"
    procs = [subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)], cwd=REPO,
                              env={**clean_env(), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    logs = [p.communicate(timeout=540)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    trials = state_trials(out)
    assert [(t["status"], t["starts"]) for t in trials] == [("finished", 1)] * 4
    for trial in trials:
        assert starts_logged(out, trial["name"]) == 1
        summary = json.loads((out / "runs" / trial["name"] / "summary.json").read_text())
        assert summary["status"] == "finished" and [a["status"] for a in summary["attempts"]] == ["finished"]
        assert trial["metrics"] == summary["metrics"]


def _held(run_dir: Path) -> bool:
    from inception_lab.run.lock import run_lock

    if not (run_dir / ".lock").is_file():
        return False
    lock = run_lock(run_dir)
    free = lock.acquire(timeout=0)
    lock.release()
    return not free


@pytest.mark.slow
def test_a_runner_stopped_past_its_lease_never_doubles_a_trial(tmp_path: Path) -> None:
    """Runner A is SIGSTOPped past its lease while its trial's fit runs on (a stuck NFS call does the same; the fit
    waits at step 3, tests/ddp_probe.PauseAt, until the test lets it go); runner B starts: it runs the other trial
    (2 steps: it never waits) and leaves A's alone (its fit holds the run directory), never a second fit of it
    (before: B moved the live run aside and started a second fit with the same --run_dir). A, continued, finishes
    its trial: one start, one attempt, one set of checkpoints."""
    path = write_sweep(tmp_path / "stopped.yaml", {"trainer.max_epochs": {"values": [3, 1]}},
                       fit_command(*short(epochs=None, batches=2, val_batches=1),
                                   "--trainer.callbacks+=ddp_probe.PauseAt"))
    out = tmp_path / "sweep"
    env = {**clean_env(), "WANDB_MODE": "disabled", "INCEPTION_LAB_SWEEP_LEASE_S": "3", "PAUSE_AT_STEP": "3",
           "PYTHONPATH": probe_path()}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    a = start()
    deadline = time.monotonic() + 600
    while not (trials := state_trials(out)) or not (paused := out / "runs" / trials[0]["name"] / "paused0").exists():
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()[0]
        time.sleep(0.2)
    first = paused.parent
    a.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4)  # past A's lease
        b = start()
        while b.poll() is None:
            assert starts_logged(out, trials[0]["name"]) == 1 and not (out / "runs" / ".discarded").exists()
            time.sleep(0.2)
        log_b = b.communicate()[0]
        assert b.returncode == 0 and f"start {trials[0]['name']}" not in log_b, log_b
        assert _held(first) and paused.exists()
        mid = state_trials(out)
        assert (mid[0]["status"], mid[0]["owner"]) == ("running", trials[0]["owner"]) and \
            (mid[1]["status"], mid[1]["starts"]) == ("finished", 1)
    finally:
        a.send_signal(signal.SIGCONT)
        paused.unlink(missing_ok=True)
    log_a = a.communicate(timeout=300)[0]
    assert a.returncode == 0, log_a
    done = state_trials(out)
    assert [(t["status"], t["starts"], t["owner"]) for t in done] == [("finished", 1, None)] * 2
    summary = json.loads((first / "summary.json").read_text())
    assert [x["status"] for x in summary["attempts"]] == ["finished"] and summary["attempts"][0]["epochs"] == 3
    assert len(list((first / "checkpoints").glob("best-*.ckpt"))) == 1 and not list(first.rglob("*-v1.ckpt"))
    assert "another runner holds it now" not in log_a


ARRAY_TASK = {"SLURM_JOB_ID": "90", "SLURM_ARRAY_JOB_ID": "88", "SLURM_ARRAY_TASK_ID": "1"}


@pytest.mark.parametrize("signum, slurm_env, requeued", [(signal.SIGUSR1, ARRAY_TASK, True),
                                                         (signal.SIGTERM, ARRAY_TASK, False),
                                                         (signal.SIGUSR1, {"SLURM_JOB_ID": "77"}, False)],
                         ids=["warning", "scancel", "not-an-array-task"])
def test_only_the_time_limit_warning_requeues_an_array_task(signum: int, slurm_env: dict[str, str], requeued: bool,
                                                            tmp_path: Path) -> None:
    """In a SLURM array task, the job file's warning (``--signal=B:USR1@120``) stops the trials and requeues the task
    (``scontrol requeue <array>_<task>``); a plain ``scancel`` (SIGTERM) stops them the same way and requeues nothing
    (it used to requeue on every SIGTERM, undoing the cancel), nor does a runner that is not an array task. Either way
    the trial is interrupted, not failed."""
    path, out = fake_sweep(tmp_path, sleep=30.0), tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**clean_env(), "WANDB_MODE": "disabled", **slurm_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not list((out / "runs").glob("*/ran.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signum)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 143, log
    assert [t["status"] for t in state_trials(out)][:1] == ["interrupted"]
    calls = (tmp_path / "scontrol.calls").read_text().split() if (tmp_path / "scontrol.calls").exists() else []
    assert calls == (["requeue", "88_1"] if requeued else []), log
    assert ("its trials resume when SLURM starts this task again" in log) == requeued, log


def test_a_cancel_is_recorded_before_the_trials_have_stopped(tmp_path: Path) -> None:
    """``scancel``'s SIGTERM, then SIGKILL KillWait later (30 s by default; 10 in tests/slurm_cluster.py) whatever is
    still running: the runner records its trial interrupted at the SIGTERM, while the trial is still saving (here it
    takes a minute), not once it has ended. It used to record after, and a trial slower than KillWait left the state
    "running" (seen on a busy machine, in the real SLURM array test)."""
    slow_stop = ("import pathlib, signal, sys, time; d = pathlib.Path(sys.argv[-1]).parent; "
                 "signal.signal(signal.SIGTERM, lambda *a: time.sleep(60)); (d / 'started').write_text(''); "
                 "time.sleep(60)")
    path, out = fake_sweep(tmp_path, 0.0, command=["python", "-c", slow_stop, "${args_json_file}"]), tmp_path / "o"
    proc = start_runner(path, out, wandb="disabled")
    deadline = time.monotonic() + 600
    while not list((out / "runs").glob("*/started")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while state_trials(out)[0]["status"] != "interrupted":
        assert proc.poll() is None and time.monotonic() < deadline, "not recorded while its trial stops"
        time.sleep(0.1)
    assert proc.poll() is None  # still waiting on its trial: what KillWait cuts short
    proc.send_signal(signal.SIGKILL)  # the trial goes with it (PR_SET_PDEATHSIG)
    log = proc.communicate(timeout=600)[0]
    assert "stopped (SIGTERM: a cancel); run the same command again to carry on" in log, log
    assert [(t["status"], t["owner"]) for t in state_trials(out)][:2] == [("interrupted", None), ("pending", None)]


def test_a_stopped_runner_gives_back_the_signal_handlers_it_changed(tmp_path: Path) -> None:
    """The runner, stopped (a trial here sends it SIGTERM as a scancel would), ignores further signals while it
    records its trials, then hands all three back as it found them: a caller in the same process (a notebook, a
    test) keeps its Ctrl-C. SIGINT used to stay ignored."""
    stop_parent = "import os, signal, time; os.kill(os.getppid(), signal.SIGTERM); time.sleep(30)"
    path = fake_sweep(tmp_path, sleep=0.0, command=["python", "-c", stop_parent])
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    assert in_process(["sweep", str(path), "--out", str(tmp_path / "out")]) == 143
    assert {s: signal.getsignal(s) for s in before} == before
