"""Weights & Biases beside the run directory: online when a server answers, offline at once when none does.

W&B never costs a run: with no API key, a server that does not tell who the key belongs to within a few seconds, or
an online ``wandb.init`` that fails anyway, the run logs offline into ``<run dir>/wandb/`` and says so in one line;
upload it later with ``wandb sync``. ``WANDB_MODE`` is respected. Only rank 0 talks to W&B.
"""

from __future__ import annotations

import base64
import http.client
import json
import netrc
import os
import secrets
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from inception_lab.errors import UserError
from inception_lab.run.files import read_json, write_atomic
from inception_lab.run.identity import variant_name
from inception_lab.run.layout import RunDir

PROBE_TIMEOUT = 5.0  # seconds for the server to say who the API key belongs to
INIT_TIMEOUT = 30.0  # seconds for an online wandb.init (wandb's default: 90), unless WANDB_INIT_TIMEOUT says


@dataclass
class WandbOptions:
    """W&B logging (``--wandb.*``).

    Args:
        enabled: log to W&B beside the run directory.
        project: W&B project.
        entity: W&B entity (user or team); None: the API key's default.
        group: run group; None: the W&B sweep (under ``wandb agent``) or the experiment name.
        tags: extra tags; the experiment and the run's variant (``key=value``) are always added.
        mode: ``auto`` (online if a server answers, else offline), ``online``, ``offline`` or ``disabled``.
            The ``WANDB_MODE`` environment variable, when set, wins.
    """

    enabled: bool = True
    project: str = "inception-lab"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


def _api_key(host: str) -> str | None:
    """The API key wandb would use for ``host``: ``WANDB_API_KEY``, else the netrc file's (``NETRC`` or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        auth = netrc.netrc(os.path.expanduser(os.environ["NETRC"]) if os.environ.get("NETRC") else None)
        found = auth.authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return found[2] if found else None


def _ask_viewer(base_url: str, key: str, timeout: float) -> str | None:
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/graphql", data=json.dumps({"query": "{ viewer { id } }"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                return f"answered HTTP {response.status}"
            body = json.loads(response.read())
    except urllib.error.HTTPError as error:
        return f"answered HTTP {error.code}"
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            return f"did not answer within {timeout:g} s"
        return f"is unreachable ({error.reason})"
    except TimeoutError:
        return f"did not answer within {timeout:g} s"
    except (OSError, http.client.HTTPException, ValueError) as error:
        return f"gave no readable answer ({type(error).__name__})"
    if not isinstance(body, dict):
        return "gave no readable answer"
    if body.get("errors"):
        error = body["errors"][0]
        message = error.get("message") if isinstance(error, dict) else None
        return f"answered an error ({str(message or error)[:100]})"
    if not (body.get("data") or {}).get("viewer"):
        return "does not know the API key"
    return None


def _probe(base_url: str, key: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the W&B server cannot take a run with this key (None: it can), after asking it who the key belongs to.
    Bounded by ``timeout`` overall, name resolution included (a socket timeout covers neither DNS nor a trickle)."""
    answer: list[str | None] = []
    asking = threading.Thread(target=lambda: answer.append(_ask_viewer(base_url, key, timeout)), daemon=True)
    asking.start()
    asking.join(timeout)
    return answer[0] if answer else f"did not answer within {timeout:g} s"


def _offline_note(reason: str, run_dir: Path) -> None:
    print(f"wandb: {reason}: logging offline to {run_dir / 'wandb'}; upload later with "
          f"`wandb sync {run_dir / 'wandb'}/offline-run-*`", flush=True)


def resolve_mode(options: WandbOptions, run_dir: Path) -> str:
    """online / offline / disabled; sets ``WANDB_MODE`` so that DDP ranks and wandb agree without probing again.
    ``enabled=False`` turns W&B off whatever ``WANDB_MODE`` says; otherwise ``WANDB_MODE`` wins over ``mode``.
    Ranks other than 0 never log to W&B and do not probe (``auto`` is offline there)."""
    if not options.enabled:
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if options.mode == "disabled":
        return "disabled"
    mode = options.mode
    if mode == "auto" and not _is_rank_zero():
        mode = "offline"
    elif mode == "auto":
        base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        key = _api_key(urlparse(base_url).hostname or "api.wandb.ai")
        failure = "no W&B API key (run `wandb login` to log online)" if key is None else _probe(base_url, key)
        mode = "offline" if failure else "online"
        if failure:
            _offline_note(failure if key is None else f"W&B server {base_url} {failure}", run_dir)
    os.environ["WANDB_MODE"] = mode
    return mode


def _is_rank_zero() -> bool:
    # Lightning's: it reads SLURM_PROCID too (srun sets no RANK/LOCAL_RANK)
    return rank_zero_only.rank == 0


class RunWandbLogger(WandbLogger):
    """WandbLogger that takes the resolved config and finishes its run, so one process can run two fits, and goes
    on offline when an online ``wandb.init`` fails (a server that died after the probe, a mode forced online)."""

    _closed = False  # finished (finalize): never started again, e.g. by a summary logged after a SLURM requeue
    hold_open = False  # set by the fit's end when its test pass follows (run.record.RunRecord): one W&B run for both

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)  # Lightning's None, which W&B warns "has no effect"

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        try:
            return super().experiment
        except Exception as error:
            if self._wandb_init.get("mode") == "offline":
                raise
            import wandb

            first_line = (str(error).strip().splitlines() or [""])[0][:150]
            _offline_note(f"online wandb.init failed ({type(error).__name__}: {first_line})",
                          Path(self._wandb_init["dir"]))
            wandb.teardown()  # wandb-core holds the failed run's id "in use": the offline run gets a fresh one
            self._wandb_init["mode"] = "offline"
            os.environ["WANDB_MODE"] = "offline"
            return super().experiment

    @rank_zero_only
    def log_config(self, config: dict[str, Any]) -> None:
        # Under `wandb agent` the run config already holds the swept values, which the sweep's grid reads back to
        # know which cells are done: keep those keys as the agent set them.
        swept = set(self.experiment.config.keys()) if os.environ.get("WANDB_SWEEP_ID") else set()
        self.experiment.config.update({k: v for k, v in config.items() if k not in swept}, allow_val_change=True)

    @rank_zero_only
    def log_summary(self, values: dict[str, Any]) -> None:
        if not self._closed:
            self.experiment.summary.update(values)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self.hold_open and status == "success":  # the fit ended; its test pass logs into this run, then closes it
            self.hold_open = False
            return
        self._closed = True
        if self._experiment is not None:
            experiment, self._experiment = self._experiment, None
            try:
                experiment.finish(exit_code=0 if status == "success" else 1)
            except Exception as error:  # its service process killed with the job (scancel, a requeue): go on
                print(f"inception_lab: warning: W&B could not close run {self.version} ({type(error).__name__}: its "
                      "service process is gone); what it logged is in the run directory's wandb/ (`wandb sync` it)",
                      file=sys.stderr)


def make_wandb_logger(config: Any, run_dir: Path, variant: dict[str, Any], stage: str = "fit") -> RunWandbLogger | None:
    """The W&B logger of a run, or None when W&B is disabled; ``config`` is the command's instantiated config
    (LightningCLI's ``config_init``: ``config.wandb`` is a :class:`WandbOptions`). The fit's run id lives in the run
    directory (a resume or requeue logs into the same W&B run): rank 0 writes it; another rank reads it, or takes an
    id of its own that it never writes (it logs nothing). validate/test/predict log to a W&B run of their own (job
    type: the stage, in the fit's group, ``fit_run`` in its config), never into the fit's, which they would close."""
    options: WandbOptions = config.wandb
    mode = resolve_mode(options, run_dir)
    if mode == "disabled":
        return None
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = RunDir(run_dir).wandb_run
    try:
        fit_id = (read_json(id_file) or {}).get("id")
        if fit_id is not None and not isinstance(fit_id, str):
            raise ValueError(f"{id_file}: its id is {fit_id!r}, not a W&B run id")
    except ValueError as error:
        raise UserError(f"{error} (delete it, and the run logs to a new W&B run)") from None
    if stage != "fit":
        run_id = secrets.token_hex(4)
    elif fit_id is not None:
        run_id = fit_id
    else:
        run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
        if _is_rank_zero():
            write_atomic(id_file, json.dumps({"id": run_id}))
    tags = [config.experiment, *(variant_name({k: v}) for k, v in variant.items()), *options.tags]
    group = options.group or os.environ.get("WANDB_SWEEP_ID") or config.experiment
    evaluation = {} if stage == "fit" else {"job_type": stage, "config": {"fit_run": fit_id}}
    return RunWandbLogger(
        name=config.run_name if stage == "fit" else f"{config.run_name}-{stage}", save_dir=str(run_dir), id=run_id,
        project=options.project, entity=options.entity, group=group, tags=[t[:64] for t in tags],
        resume="allow" if stage == "fit" else None, mode=mode,
        # W&B's own run summary stays in the run, not the terminal; offline, its lines too (ours says where and how
        # to sync); online, its link to the run stays
        settings=wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT), quiet=True,
                                silent=mode == "offline"), **evaluation,
    )
