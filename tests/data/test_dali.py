"""The DALI training loader (``data/dali.py``), where NVIDIA DALI is installed: ranks read disjoint, equal shards, in an
order fixed by (seed, epoch) alone, also in a 2-rank DDP fit through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.data.conftest import imagenet_data


def dali_loader(root: Path, rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 0):
    from inception_lab.data.dali import DaliTrainLoader
    from inception_lab.data.imagenet import load_image

    files = sorted(str(p) for p in (root / "train").glob("*/*.JPEG"))
    loader = DaliTrainLoader(files, list(range(len(files))), 4, 32, seed=seed, rank=rank, world_size=world_size,
                             decode=load_image)
    loader.set_epoch(epoch)
    return loader


def test_a_file_dali_cannot_decode_is_one_line_naming_it(tiny_imagenet: Path) -> None:
    """DALI stops on an undecodable file with its own error, naming its operator ("nvImageCodec failure"): the
    loader names the file, on the rank whose shard holds it, in the one line the torchvision backends give."""
    pytest.importorskip("nvidia.dali")
    from inception_lab.data.base import BadImageError

    for rank in (0, 1):
        loader = dali_loader(tiny_imagenet, rank, 2, epoch=1)
        victim = loader.files[loader.epoch_order()[rank * loader.shard_size + 5]]  # in its second batch
        jpeg = Path(victim).read_bytes()
        Path(victim).write_text("not an image\n")
        try:
            with pytest.raises(BadImageError) as error:
                list(loader)
        finally:
            Path(victim).write_bytes(jpeg)
        assert str(error.value) == (
            f"backend='dali': {victim} cannot be decoded (Unsupported image file), and DALI cannot skip a file: "
            "replace it with a readable image (removing it would change the held-out split) and run the command "
            "again (a fit resumes with --ckpt_path last), or set backend=torchvision, which skips such files")


def test_dali_shards_and_epoch_order(tiny_imagenet: Path) -> None:
    """Ranks read disjoint shards of one length covering the epoch; (seed, epoch) alone fixes the order: a resumed
    epoch reads what the uninterrupted one read. Labels here are file indices, so they show the order."""
    pytest.importorskip("nvidia.dali")
    shards = []
    for rank in (0, 1):
        batches = list(dali_loader(tiny_imagenet, rank, 2, epoch=3))
        assert all(x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) for x, _ in batches)
        assert len(batches) == len(dali_loader(tiny_imagenet, rank, 2))
        shards.append(torch.cat([y for _, y in batches]).tolist())
    assert len(shards[0]) == len(shards[1]) == 9  # 18 images, 2 ranks
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(18))
    again = torch.cat([y for _, y in dali_loader(tiny_imagenet, 0, 2, epoch=3)]).tolist()
    other = torch.cat([y for _, y in dali_loader(tiny_imagenet, 0, 2, epoch=4)]).tolist()
    assert again == shards[0] and other != shards[0]


DALI_PROBE = """
import json
from pathlib import Path

from lightning import Callback


class DaliProbe(Callback):
    labels = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labels += batch[1].tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        loader = trainer.train_dataloader
        record = {"loader": type(loader).__name__, "rank": loader.rank, "world_size": loader.world_size,
                  "batches": len(loader), "labels": self.labels,
                  "callbacks": sorted(type(c).__name__ for c in trainer.callbacks)}
        Path(trainer.default_root_dir, f"dali{trainer.global_rank}-{trainer.current_epoch}.json").write_text(
            json.dumps(record))
        self.labels = []
"""


@pytest.mark.slow
def test_dali_ddp_ranks_read_disjoint_equal_shards(tmp_path: Path, tiny_imagenet: Path, run_cli,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """2 DDP ranks on gloo: the DataModule hands DALI the trainer's rank and world size (Lightning injects no
    sampler), each rank reads 8 of the 16 training images each epoch, together all of them. The recipe's
    EMAWeightAveraging copies the module on both ranks (that copy once failed under DDP: "cannot pickle
    '_thread.lock'")."""
    pytest.importorskip("nvidia.dali")
    (tmp_path / "dali_probe.py").write_text(DALI_PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the launcher re-runs the CLI for rank 1 with it
    run_cli("fit", "--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
            f"--data.init_args.root={tiny_imagenet}", "--data.init_args.backend=dali",
            "--data.init_args.interpolation=bilinear", "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=1", "--data.init_args.num_classes=3",
            "--data.init_args.val_size=2", "--data.init_args.image_size=64", "--data.init_args.eval_resize=72",
            "--data.init_args.test_views=single", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
            "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true",
            # the experiment's own callbacks (EMAWeightAveraging's copy of the module under DDP) and the probe
            "--trainer.callbacks+=dali_probe.DaliProbe", "--wandb.enabled=false",
            "--run_dir", str(tmp_path / "run"), cwd=tmp_path, timeout=600)
    dm = imagenet_data(tiny_imagenet, val_size=2)
    train_labels = sorted(dm.train_set.dataset.dataset.targets[i] for i in dm.train_set.dataset.indices)
    for epoch in (0, 1):
        ranks = [json.loads((tmp_path / "run" / f"dali{r}-{epoch}.json").read_text()) for r in (0, 1)]
        assert [(r["loader"], r["rank"], r["world_size"], r["batches"]) for r in ranks] == [
            ("DaliTrainLoader", 0, 2, 2), ("DaliTrainLoader", 1, 2, 2)]
        assert all("EMAWeightAveraging" in r["callbacks"] for r in ranks)  # the recipe's Polyak averaging, under DDP
        assert len(ranks[0]["labels"]) == len(ranks[1]["labels"]) == 8
        assert sorted(ranks[0]["labels"] + ranks[1]["labels"]) == train_labels
