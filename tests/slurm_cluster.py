"""A real single-node SLURM on localhost for the slow tests: its own munged, slurmctld and slurmd, all of their
files in a private temporary folder, on ports nobody else uses, so it runs beside a SLURM someone else has.

Needs root and Debian's `slurm-wlm` and `munge` (22.05); skips without them. Nothing in it uses cgroups: processes
are tracked through /proc (proctrack/linuxproc), tasks are not confined (task/none), and cores are the consumable
resource (select/cons_tres, CR_Core), so on a 2-core machine two 1-CPU jobs run at once. Client commands must be
run with `cluster.env` (or `cluster.run(...)`), which points SLURM_CONF at this cluster's slurm.conf.

Requeued jobs: SLURM holds a requeued job back (Reason=BeginTime) until the old job credential expires, `cred_expire`
in AuthInfo, 120 s by default; `cluster.release(job_id)` lets it start now.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE")
# what a test process may have that would point a client at another cluster or change how it submits
CLIENT_ENV_PREFIXES = ("SLURM_", "SLURMD_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_",
                       "SCANCEL_", "SACCT_", "SSTAT_", "SPANK_")
START_TIMEOUT = 60.0
_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w/:.]*)=")


def _daemon(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol show -o` record, `Key=value Key=value ...`, as a dict (a value may hold spaces or `=`)."""
    keys = list(_KEY.finditer(line))
    record = {}
    for here, after in zip(keys, keys[1:] + [None]):
        end = after.start() if after is not None else len(line)
        record[here.group(1)] = line[here.end():end].strip()
    return record


@dataclasses.dataclass
class SlurmCluster:
    root: Path  # everything of this cluster lies under it
    conf: Path  # its slurm.conf
    env: dict[str, str]  # os.environ without SLURM_* & co., plus SLURM_CONF: pass it to client commands
    node: str  # the one node's name
    procs: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command (sbatch, squeue, scontrol, ...) against this cluster; stdout and stderr as text."""
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip() or done.stdout}")
        return done

    def sbatch(self, job: str | os.PathLike | Sequence[str], *options: str,
               cwd: str | os.PathLike | None = None) -> int:
        """Submits a job file (a path) or sbatch arguments (a list: options then the job file, or `--wrap=...`);
        `options` go before them. Returns the job id (for an array, the array's id)."""
        args = [os.fspath(job)] if isinstance(job, (str, os.PathLike)) else [os.fspath(a) for a in job]
        done = subprocess.run(["sbatch", "--parsable", *options, *args], env=self.env, capture_output=True,
                              text=True, timeout=60, cwd=cwd)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """`scontrol show job -o <id>` as one dict per record: an array's id gives one per task (pending tasks
        still together may be one record, JobId=<array>, ArrayTaskId=1-3); [] once the job is purged."""
        done = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return []
            raise RuntimeError(f"scontrol show job {job_id}: {done.stderr.strip()}")
        return [parse_record(line) for line in done.stdout.splitlines() if line.strip()]

    def job(self, job_id: int | str) -> dict[str, str]:
        """The record of one job or one array task (`"12_3"`); {} once purged."""
        records = self.jobs(job_id)
        if len(records) > 1:
            raise ValueError(f"{job_id} is an array of {len(records)} records: use jobs() or wait_all()")
        return records[0] if records else {}

    def state(self, job_id: int | str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait(self, job_id: int | str, states: Iterable[str] = FINAL_STATES, timeout: float = 120,
             poll: float = 0.5) -> dict[str, str]:
        """Polls until the job (or array task) is in one of `states`; returns its record."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        record: dict[str, str] = {}
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if record.get("JobState") in wanted:
                return record
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout:.0f}s: {record}\n{self.log_tails()}")

    def wait_all(self, job_id: int | str, states: Iterable[str] = FINAL_STATES, timeout: float = 180,
                 poll: float = 0.5) -> list[dict[str, str]]:
        """Polls until every record of `job_id` (every task of an array) is in one of `states`."""
        wanted = set(states)
        deadline = time.monotonic() + timeout
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.jobs(job_id)
            if records and all(r.get("JobState") in wanted for r in records):
                return records
            time.sleep(poll)
        states_now = [(r.get("JobId"), r.get("ArrayTaskId"), r.get("JobState")) for r in records]
        raise TimeoutError(f"job {job_id} not all in {sorted(wanted)} after {timeout:.0f}s: {states_now}")

    def requeue(self, job_id: int | str) -> None:
        self.run("scontrol", "requeue", str(job_id))

    def release(self, job_id: int | str) -> None:
        """Lets a pending job start now: a requeued job otherwise waits out its BeginTime (~cred_expire, 120 s);
        a held job (`scontrol hold`, `requeuehold`) is released too."""
        record = self.jobs(job_id)
        if any(r.get("Reason") in ("JobHeldUser", "JobHeldAdmin") or r.get("Priority") == "0" for r in record):
            self.run("scontrol", "release", str(job_id))
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def cancel(self, job_id: int | str, *options: str) -> None:
        self.run("scancel", *options, str(job_id))

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):  # a daemon's own log, or what it wrote before it had one
            log = self.logs / f"{name}.log"
            if not log.exists() or not log.stat().st_size:
                log = self.logs / f"{name}.stderr.log"
            if not log.exists():
                continue
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancels what still runs, then stops the daemons by the pids this fixture holds, and last any process
        that is still this cluster's (a job's or a slurmstepd, found by SLURM_CONF in its environment)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                ids = self.run("squeue", "-h", "-o", "%A", check=False, timeout=15).stdout.split()
                if ids:
                    self.run("scancel", *ids, check=False, timeout=15)
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and self.run(
                            "squeue", "-h", "-t", "RUNNING,COMPLETING,SUSPENDED", "-o", "%A",
                            check=False, timeout=15).stdout.strip():
                        time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pid in _pids_with_env(f"SLURM_CONF={self.conf}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids_with_env(entry: str) -> list[int]:
    wanted = entry.encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _node_line(slurmd: str) -> tuple[str, str]:
    """The node as `slurmd -C` sees it (first line), addressed as localhost; RealMemory a little under what it
    reports, so a small drift never drains the node for low memory."""
    first = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    record = parse_record(first.splitlines()[0])
    name = record.pop("NodeName")
    if "RealMemory" in record:
        record["RealMemory"] = str(max(1, int(int(record["RealMemory"]) * 0.9)))
    fields = " ".join(f"{k}={v}" for k, v in record.items())
    return name, f"NodeName={name} NodeAddr=localhost NodeHostname={name} {fields} State=UNKNOWN"


def write_config(root: Path, slurmd: str, munge_socket: Path) -> tuple[Path, str]:
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    node, node_line = _node_line(slurmd)
    ctld_port, slurmd_port = _free_ports(2)
    (root / "plugstack.conf").write_text("")  # not /etc/slurm's: no SPANK plugins
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=pytest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=10
# finished jobs stay readable with `scontrol show job` for an hour
MinJobAge=3600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
{node_line}
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf, node


def _munge_dir(root: Path) -> tuple[Path, Path | None]:
    """Where munged's socket goes: under root, unless that path would pass the 107 bytes of a UNIX socket."""
    if len(str(root / "munge" / "munge.socket")) < 100:
        (root / "munge").mkdir(mode=0o700)
        return root / "munge", None
    short = Path(tempfile.mkdtemp(prefix="munge-"))
    return short, short


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode} while starting")
        done = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=15)
        seen = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and f"{cluster.node} idle" in done.stdout:
            return
        time.sleep(0.5)
    raise TimeoutError(f"node not idle after {timeout:.0f}s; sinfo says: {seen}")


def start_cluster(root: Path) -> tuple[SlurmCluster, Path | None]:
    munged, slurmctld, slurmd = (_daemon(d) for d in ("munged", "slurmctld", "slurmd"))
    munge_dir, extra = _munge_dir(root)
    munge_socket = munge_dir / "munge.socket"
    conf, node = write_config(root, slurmd, munge_socket)
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_ENV_PREFIXES)}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, env=env, node=node)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    log = root / "log"

    def spawn(name: str, args: list[str]) -> None:
        with open(log / f"{name}.stderr.log", "ab") as out:
            cluster.procs[name] = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True)

    try:
        spawn("munged", [munged, "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                         f"--pid-file={munge_dir}/munged.pid", f"--log-file={log}/munged.log",
                         f"--seed-file={munge_dir}/munged.seed"])
        deadline = time.monotonic() + 15
        while not munge_socket.exists():
            if cluster.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("munged did not make its socket")
            time.sleep(0.1)
        spawn("slurmctld", [slurmctld, "-D", "-f", str(conf)])
        spawn("slurmd", [slurmd, "-D", "-f", str(conf), "-N", node])
        _wait_idle(cluster, START_TIMEOUT)
    except Exception as e:
        tails = cluster.log_tails()
        cluster.stop()
        if extra is not None:
            shutil.rmtree(extra, ignore_errors=True)
        pytest.fail(f"the test SLURM did not start: {e}\n{tails}", pytrace=False)
    return cluster, extra


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A running single-node SLURM (partition `debug`, the node idle) for the session; stopped at the end."""
    # CI sets INCEPTION_LAB_REQUIRE_SLURM=1: there a SLURM that cannot start fails, never skips
    cannot = pytest.fail if os.environ.get("INCEPTION_LAB_REQUIRE_SLURM") == "1" else pytest.skip
    if os.geteuid() != 0:
        cannot("a test SLURM needs root (its daemons run as root)")
    missing = [d for d in ("munged", "slurmctld", "slurmd") if _daemon(d) is None]
    missing += [c for c in ("sbatch", "squeue", "scontrol", "scancel", "sinfo") if shutil.which(c) is None]
    if missing:
        cannot(f"a test SLURM needs slurm-wlm and munge (apt-get install slurm-wlm munge): {', '.join(missing)} "
               "not found")
    cluster, extra = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
        if extra is not None:
            shutil.rmtree(extra, ignore_errors=True)
