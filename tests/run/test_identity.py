"""run/identity: what a run is (its resolved config less the seed and bookkeeping), each DataModule's bookkeeping,
what a resume may change, and ``compare`` reading a run's recorded bookkeeping."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from lightning import Trainer

from inception_lab.compare import compare
from inception_lab.data import CIFARDataModule, DigitsDataModule, ImageNetDataModule
from inception_lab.run.files import RunSummary, flatten
from inception_lab.run.identity import (
    BOOKKEEPING,
    DATA_BOOKKEEPING,
    bookkeeping_keys,
    identity,
    is_bookkeeping,
    resume_differences,
    variant,
    variant_name,
)
from tests.compare.conftest import make_run, resolved

# trainer settings that change what a run computes (its length, numerics, batches, evaluation): never bookkeeping
COMPUTES = ("max_epochs", "min_epochs", "max_steps", "max_time", "precision", "gradient_clip_val",
            "gradient_clip_algorithm", "accumulate_grad_batches", "deterministic", "limit_train_batches",
            "limit_val_batches", "val_check_interval", "check_val_every_n_epoch", "callbacks", "sync_batchnorm",
            "fast_dev_run", "overfit_batches")


def test_trainer_bookkeeping_is_listed_key_by_key() -> None:
    arguments = set(inspect.signature(Trainer.__init__).parameters)
    listed = {k.removeprefix("trainer.") for k in BOOKKEEPING if k.startswith("trainer.")}
    assert listed <= arguments and not listed & set(COMPUTES)  # no typo, no setting that changes the run
    assert all(not is_bookkeeping(f"trainer.{k}") for k in COMPUTES)
    for key in ("run_dir", "run_name", "ckpt_path", "wandb.project", "wandb.tags", "trainer.devices",
                "trainer.num_nodes", "trainer.logger", "optimization.global_batch", "data.init_args.num_workers"):
        assert is_bookkeeping(key), key
    flat = resolved()
    ident = identity(flat)
    assert "seed_everything" not in ident and "trainer.max_epochs" in ident and "model.net.init_args.head" in ident
    assert not any(k.startswith(("wandb.", "trainer.devices")) or k in ("run_dir", "experiment") for k in ident)


@pytest.mark.parametrize(("cls", "where", "what"), [
    (DigitsDataModule, {"num_workers", "resident"}, {"batch_size", "val_size", "split_seed", "pad", "test_views"}),
    (CIFARDataModule, {"root", "download", "num_workers", "resident"}, {"dataset", "batch_size", "val_size"}),
    (ImageNetDataModule, {"root", "num_workers", "pin_memory", "persistent_workers", "bad_images"},
     {"image_size", "batch_size", "color_jitter", "backend", "normalization", "interpolation", "split_seed"}),
])
def test_each_datamodule_declares_its_bookkeeping(cls: type, where: set[str], what: set[str]) -> None:
    arguments = set(inspect.signature(cls.__init__).parameters)
    assert set(cls.BOOKKEEPING) & arguments == where and not set(cls.BOOKKEEPING) & what
    keys = bookkeeping_keys(cls.BOOKKEEPING)
    assert all(is_bookkeeping(f"data.init_args.{name}", keys) for name in where)
    assert not any(is_bookkeeping(f"data.init_args.{name}", keys) for name in what)
    assert set(DATA_BOOKKEEPING) >= set(cls.BOOKKEEPING)  # what compare assumes for a record that lists none


def test_a_resume_may_change_the_length_of_training_and_bookkeeping_only() -> None:
    run = resolved()
    allowed = {"trainer.max_epochs": 30, "trainer.max_steps": 100, "run_dir": "elsewhere", "trainer.devices": 4,
               "wandb.project": "p", "data.init_args.num_workers": 8, "test_after_fit": False}
    assert resume_differences(run, {**run, **allowed}) == {}
    refused = {"trainer.precision": "bf16-mixed", "trainer.limit_train_batches": 5, "seed_everything": 7,
               "trainer.accumulate_grad_batches": 2, "model.net.init_args.width_mult": 0.25}
    assert resume_differences(run, {**run, **refused}) == {k: (run[k], v) for k, v in refused.items()}
    assert resume_differences({**run, "model.new": 1}, run) == {}  # a key only one side has is not compared


def test_a_variant_names_what_a_run_changes_beside_its_experiment() -> None:
    experiment = resolved()
    run = {**experiment, "model.aux_weight": 0.1, "trainer.max_epochs": 2, "run_dir": "x", "seed_everything": 3}
    assert variant(run, experiment) == {"model.aux_weight": 0.1}
    assert variant_name({"model.aux_weight": 0.1, "model.net.init_args.filter_sizes": [3, [3, 3]]}) == (
        "aux_weight=0.1-filter_sizes=3x3x3")


def test_compare_reads_the_bookkeeping_a_run_recorded(tmp_path: Path) -> None:
    """A DataModule's own bookkeeping argument (here ``cache_dir``), recorded by the fit, groups nothing; a run whose
    record lists no such key (an older one) is told apart by it."""
    runs = [make_run(tmp_path / "runs", f"r{seed}", "gap", seed, 0.8 + seed / 100,
                     config={"data.init_args.cache_dir": f"/scratch/{seed}"}) for seed in range(3)]
    for run in runs[:2]:
        summary = RunSummary.load(run)
        assert summary is not None
        summary.extra["bookkeeping"] = bookkeeping_keys((*DATA_BOOKKEEPING, "cache_dir"))
        summary.save(run)
    result = compare(runs[:2], out=tmp_path / "out")
    assert result.by == [] and [len(c.runs) for c in result.cells] == [2]
    result = compare(runs, out=tmp_path / "out")
    assert result.by == ["data.init_args.cache_dir"] and [len(c.runs) for c in result.cells] == [1, 1, 1]


def test_variant_and_its_name() -> None:
    resolved = {"model.aux_weight": 0.1, "model.net.init_args.filter_sizes": [3, [3, 3]], "model.net.init_args.head":
                "gap", "seed_everything": 3, "trainer.max_epochs": 2, "run_dir": "x", "wandb.project": "p"}
    experiment = {"model.aux_weight": 0.3, "model.net.init_args.filter_sizes": [3, 5], "model.net.init_args.head":
                  "gap", "seed_everything": 0, "trainer.max_epochs": 6, "run_dir": None, "wandb.project": "q"}
    values = variant(resolved, experiment)
    assert values == {"model.aux_weight": 0.1, "model.net.init_args.filter_sizes": [3, [3, 3]]}
    assert variant_name(values) == "aux_weight=0.1-filter_sizes=3x3x3" and variant_name({}) == ""
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}}) == {"a.b": 1, "a.c.d": [1]}
