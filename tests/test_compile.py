"""``model.compile``: torch.compile (inductor on a CPU) of the training step's network changes nothing of the maths,
its checkpoints keep plain keys and load into an eager model, EMA averages it, and the network compiles whole."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from inception_lab.models import Inception
from inception_lab.models.inception import InceptionSpec, PoolSpec
from inception_lab.module import InceptionClassifier

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
