"""Weights & Biases beside the run directory: online when a server answers, offline at once when none does.

W&B never blocks a run: with no API key, or a server that does not answer a 2 s probe, the run logs offline into
``<run dir>/wandb/`` and says so in one line; upload it later with ``wandb sync``. ``WANDB_MODE`` is respected.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from inception_lab.run.files import short_value


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


def _api_key_present(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _server_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(options: WandbOptions, run_dir: Path) -> str:
    """online / offline / disabled; sets ``WANDB_MODE`` so that DDP ranks and wandb agree without probing again.
    ``enabled=False`` turns W&B off whatever ``WANDB_MODE`` says; otherwise ``WANDB_MODE`` wins over ``mode``."""
    if not options.enabled:
        return "disabled"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if options.mode == "disabled":
        return "disabled"
    mode = options.mode
    if mode == "auto":
        url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
        reason = None
        if not _api_key_present(host):
            reason = "no W&B API key (run `wandb login` to log online)"
        elif not _server_answers(host, port):
            reason = f"W&B server {host} does not answer"
        mode = "offline" if reason else "online"
        if reason and _is_rank_zero():
            print(f"wandb: {reason}: logging offline to {run_dir / 'wandb'}; upload later with "
                  f"`wandb sync {run_dir / 'wandb'}/offline-run-*`", flush=True)
    os.environ["WANDB_MODE"] = mode
    return mode


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


class RunWandbLogger(WandbLogger):
    """WandbLogger that takes the resolved config and finishes its run, so one process can run two fits."""

    @rank_zero_only
    def log_config(self, config: dict[str, Any]) -> None:
        # Under `wandb agent` the run config already holds the swept values, which the sweep's grid reads back to
        # know which cells are done: keep those keys as the agent set them.
        swept = set(self.experiment.config.keys()) if os.environ.get("WANDB_SWEEP_ID") else set()
        self.experiment.config.update({k: v for k, v in config.items() if k not in swept}, allow_val_change=True)

    @rank_zero_only
    def log_summary(self, values: dict[str, Any]) -> None:
        self.experiment.summary.update(values)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def make_wandb_logger(config: Any, run_dir: Path, variant: dict[str, Any]) -> RunWandbLogger | None:
    """The W&B logger of a run, or None when W&B is disabled. The run id lives in the run directory (resume)."""
    options = WandbOptions(**(config.wandb.as_dict() if hasattr(config.wandb, "as_dict") else dict(config.wandb)))
    mode = resolve_mode(options, run_dir)
    if mode == "disabled":
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file = run_dir / "wandb_run.json"
    if id_file.is_file():
        run_id = json.loads(id_file.read_text())["id"]
    else:
        run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
        if _is_rank_zero():
            id_file.write_text(json.dumps({"id": run_id}))
    tags = [config.experiment, *(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in variant.items()), *options.tags]
    group = options.group or os.environ.get("WANDB_SWEEP_ID") or config.experiment
    return RunWandbLogger(
        name=config.run_name, save_dir=str(run_dir), id=run_id, project=options.project, entity=options.entity,
        group=group, tags=[t[:64] for t in tags], resume="allow", mode=mode,
    )
