"""``model.compile``: torch.compile (inductor on a CPU) of the training step's network changes nothing of the maths,
its checkpoints keep plain keys and load into an eager model, EMA averages it, and the network compiles whole."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from inception_lab.models import Inception
from inception_lab.models.inception import InceptionSpec, PoolSpec
from inception_lab.module import InceptionClassifier
from inception_lab.run.files import read_summary as summary
from tests.conftest import REPO, probe_path

# Two inception blocks of the CIFAR preset and one aux head, at an eighth of the widths: every kind of layer the
# quickstart has, in a graph inductor compiles in a minute on two cores (the whole quickstart takes several)
STAGES = (InceptionSpec("3a", 64, 96, 128, 16, 32, 32), PoolSpec(3, 2), InceptionSpec("4a", 192, 96, 208, 16, 48, 64))


def _model(compile: bool) -> InceptionClassifier:
    torch.manual_seed(0)
    net = Inception(num_classes=10, in_channels=1, image_size=32, stem="cifar", stages=STAGES, width_mult=0.125,
                    aux_positions=("4a",), dropout=0.0, aux_dropout=0.0)
    return InceptionClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), compile=compile)


def _fit(model: InceptionClassifier, root: Path, callbacks: list | None = None) -> L.Trainer:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(48, 1, 32, 32, generator=generator)
    data = TensorDataset(images, torch.randint(0, 10, (48,), generator=generator))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                        callbacks=callbacks or [])
    trainer.fit(model, DataLoader(data, batch_size=16))
    return trainer


@pytest.mark.slow
def test_a_compiled_fit_equals_the_eager_fit_and_its_checkpoint_loads_eager(tmp_path: Path) -> None:
    eager, compiled = _model(False), _model(True)
    _fit(eager, tmp_path / "eager")
    trainer = _fit(compiled, tmp_path / "compiled")
    assert compiled._compiled and compiled.net._compiled_call_impl is not None  # it did run compiled
    weights = compiled.state_dict()
    assert not [k for k in weights if "_orig_mod" in k] and weights.keys() == eager.state_dict().keys()
    for key, value in eager.state_dict().items():  # three SGD steps apart by float rounding only
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    plain = _model(False)
    plain.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"], strict=True)
    x = torch.randn(4, 1, 32, 32)
    plain.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), compiled(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ema_averages_a_compiled_network(tmp_path: Path) -> None:
    """EMAWeightAveraging copies the compiled module and, at the end of the fit, puts the average into it: the
    weights then differ from the last step's (the same fit without EMA) and keep their plain keys."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    model, last = _model(True), _model(True)
    ema = EMAWeightAveraging(decay=0.5)
    _fit(model, tmp_path / "ema", [ema])
    _fit(last, tmp_path / "last")
    averaged, weights = ema._average_model.module.state_dict(), model.state_dict()
    assert averaged.keys() == weights.keys() == last.state_dict().keys()
    assert not [k for k in weights if "_orig_mod" in k]
    for key, value in weights.items():  # the average is what the module holds now
        torch.testing.assert_close(value, averaged[key], msg=key)
    assert any(not torch.allclose(v, last.state_dict()[k]) for k, v in weights.items() if v.is_floating_point())


@pytest.mark.slow
def test_the_network_compiles_without_graph_breaks() -> None:
    """The module compiles the network alone (its logging and metrics stay eager, Lightning #17177), and the
    network is one graph in train mode (aux head included) and in eval."""
    net = _model(False).net
    x = torch.randn(2, 1, 32, 32)
    for training in (True, False):
        net.train(training)
        explained = torch._dynamo.explain(net)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


# the same two blocks as a config for the CLI, without dropout (inductor draws its own random numbers) and with SGD
# (Adam's first steps divide by tiny gradients, and so magnify float rounding into visible weight changes)
SMALL_NET = """
model:
  net:
    init_args:
      stages:
        - {name: 3a, ch1x1: 64, ch3x3red: 96, ch3x3: 128, ch5x5red: 16, ch5x5: 32, pool_proj: 32}
        - {kernel_size: 3, stride: 2}
        - {name: 4a, ch1x1: 192, ch3x3red: 96, ch3x3: 208, ch5x5red: 16, ch5x5: 48, pool_proj: 64}
      aux_positions: [4a]
      dropout: 0.0
      aux_dropout: 0.0
  optimizer:
    class_path: torch.optim.SGD
    init_args: {lr: 0.05, momentum: 0.9}
"""


@pytest.mark.slow
def test_compile_under_two_rank_gloo_ddp(tmp_path: Path, run_cli, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.compile: true`` with the CLI's DDP on 2 CPU processes (gloo): the network is compiled inside DDP's
    wrapper on each rank (PyTorch's advice: compile the inner module), both ranks end with the same weights, equal
    to the eager DDP fit's, with no graph break and one graph per mode; the checkpoint validates in an eager model
    on one process to the run's own val/acc (its 2 ranks x 2 batches are the one process's first 4)."""
    (tmp_path / "small.yaml").write_text(SMALL_NET)
    # the launcher re-runs the CLI for rank 1 with this environment
    monkeypatch.setenv("PYTHONPATH", probe_path())
    runs = {}
    for compile in (False, True):
        runs[compile] = run_dir = tmp_path / f"compile-{compile}"
        run_cli("fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--config", "small.yaml",
                "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
                "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
                f"--model.compile={str(compile).lower()}", "--trainer.callbacks+=ddp_probe.RankProbe",
                "--run_dir", str(run_dir), cwd=tmp_path, timeout=900)
    dynamo = [json.loads((runs[True] / f"dynamo{rank}.json").read_text()) for rank in (0, 1)]
    for rank in dynamo:  # train and eval: one graph each, nothing broken, on both ranks
        assert rank["compiled"] and rank["graph_breaks"] == 0 and rank["stats"]["unique_graphs"] == 2, dynamo
    assert not json.loads((runs[False] / "dynamo0.json").read_text())["compiled"]
    hashes = [(runs[True] / f"weights{rank}.sha").read_text() for rank in (0, 1)]
    assert hashes[0] == hashes[1]  # DDP kept the compiled ranks in step
    eager, compiled = (torch.load(runs[c] / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
                       for c in (False, True))
    assert compiled.keys() == eager.keys() and not [k for k in compiled if "_orig_mod" in k]
    for key, value in eager.items():  # four DDP steps apart by float rounding only
        torch.testing.assert_close(compiled[key], value, rtol=1e-3, atol=1e-4, msg=key)
    code, _, err = cli(["validate", "--config", str(REPO / "experiments/quickstart.yaml"), "--config",
                        str(tmp_path / "small.yaml"), "--trainer.accelerator=cpu", "--trainer.limit_val_batches=4",
                        "--ckpt_path", str(runs[True] / "checkpoints/last.ckpt"), "--run_dir", str(tmp_path / "eager")])
    assert code == 0, err[-3000:]
    assert summary(tmp_path / "eager")["metrics"]["validate/acc"] == pytest.approx(
        summary(runs[True])["metrics"]["val/acc"], abs=1e-6)
