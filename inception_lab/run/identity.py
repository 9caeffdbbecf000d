"""What a run is, with no torch import: its identity is its resolved config less bookkeeping (where and how it runs,
not what it computes) and less its seed (what varies within a cell of ``compare``). Also what a resume may change,
and a run's variant (where it departs from its experiment file: its name and W&B tags).

Flat keys (:func:`~inception_lab.run.files.flatten`); an entry of a bookkeeping list that ends in "." covers every
key under it (``wandb.``). Each DataModule declares its own bookkeeping init_args (``BOOKKEEPING``); a fit records its
full list as summary.json's "bookkeeping" (:func:`bookkeeping_keys`), which ``compare`` reads back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inception_lab.run.files import short_value

SEED = "seed_everything"
# Where a run's files go, how it reports, where it runs: the trainer's keys listed one by one, for the rest of
# trainer.* (length, precision, clipping, accumulation, limits, determinism, callbacks) changes what a run computes.
# optimization.* is the W&B config's copy of what the run derived from its config and devices.
BOOKKEEPING = (
    "config", "run_dir", "run_name", "experiment", "ckpt_path", "weights_only", "print_config", "wandb.",
    "test_after_fit",  # an evaluation after the fit: what the fit trained is the same either way
    "optimization.", "trainer.accelerator", "trainer.strategy", "trainer.devices", "trainer.num_nodes",
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_checkpointing", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps", "trainer.profiler",
    "trainer.detect_anomaly", "trainer.inference_mode", "trainer.benchmark", "trainer.barebones",
    "trainer.enable_autolog_hparams", "trainer.model_registry")
# ImageDataModule.BOOKKEEPING: where the data lives and how it is loaded (the order of a training epoch depends on
# neither: (seed, epoch) fixes it); also what compare assumes for a record that lists no "bookkeeping".
DATA_BOOKKEEPING = ("root", "download", "num_workers", "pin_memory", "persistent_workers", "resident",
                    "bad_images")
TRAINING_LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")  # what a resume may change


def bookkeeping_keys(data_bookkeeping: Iterable[str] = DATA_BOOKKEEPING) -> list[str]:
    """A run's bookkeeping list, as its fit records it (summary.json's "bookkeeping"): the generic keys and its
    DataModule's (``type(datamodule).BOOKKEEPING``) as ``data.init_args.<name>``."""
    return [*BOOKKEEPING, *(f"data.init_args.{name}" for name in data_bookkeeping)]


def is_bookkeeping(key: str, bookkeeping: Iterable[str] | None = None) -> bool:
    entries = bookkeeping_keys() if bookkeeping is None else bookkeeping
    return any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in entries)


def identity(config: dict[str, Any], bookkeeping: Iterable[str] | None = None) -> dict[str, Any]:
    """What a run computes: its resolved flat config less the seed and ``bookkeeping`` (the run's recorded list;
    None: :func:`bookkeeping_keys` with the project's DataModules' defaults). Two runs are seeds of one cell exactly
    when their identities are equal."""
    entries = bookkeeping_keys() if bookkeeping is None else list(bookkeeping)
    return {k: v for k, v in config.items() if k != SEED and not is_bookkeeping(k, entries)}


def resume_differences(run: dict[str, Any], resume: dict[str, Any],
                       bookkeeping: Iterable[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """The flat keys where a resume's resolved config differs from the run's own (``config.yaml``): key -> (the
    run's value, the resume's). The length of training and bookkeeping may differ, the seed may not; a key only one
    of them has (an argument the code gained or lost since the run started) is not compared."""
    entries = bookkeeping_keys() if bookkeeping is None else list(bookkeeping)
    keys = [k for k in run if k in resume and k not in TRAINING_LENGTH and not is_bookkeeping(k, entries)]
    return {k: (run[k], resume[k]) for k in keys if run[k] != resume[k]}


def variant(resolved: dict[str, Any], experiment: dict[str, Any]) -> dict[str, Any]:
    """What makes a run differ from its experiment file, as its name and W&B tags say it: the flat keys of its
    identity whose value is not the experiment's own (both resolved, defaults included), trainer.* aside (a name
    says what a run changes in the network, the optimization and the data; ``compare`` tells runs apart by all of
    their identity, trainer keys included)."""
    return {key: value for key, value in identity(resolved).items()
            if not key.startswith("trainer.") and (key not in experiment or experiment[key] != value)}


def variant_name(values: dict[str, Any]) -> str:
    """A variant as it reads in run names and W&B tags: ``head=fc-filter_sizes=3x3x3`` ("" for none)."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}={short_value(value)}" for key, value in values.items())
