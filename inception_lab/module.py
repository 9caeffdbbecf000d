"""The system: losses, metrics and optimization around an Inception network (the network owns the shapes)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from inception_lab.arguments import UnitInterval, check_arguments
from inception_lab.data.views import ViewBatch
from inception_lab.errors import ArgumentValueError
from inception_lab.models.cost import summarize
from inception_lab.models.inception import Inception

STAGES = ("train", "val", "test")


def _accuracy(num_classes: int) -> MetricCollection:
    # validate_args=False: the checks read label values on the host (a device sync per step); our loaders are
    # trusted to give labels in range
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=False),
        "acc_top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", validate_args=False),
    })


ALIASES = {"lr": "learning rate", "eps": "epsilon"}  # how torch's optimizers name their arguments in errors


def _refused(name: str, built: Any, error: Exception) -> ArgumentValueError:
    """torch's refusal of an optimizer's (or scheduler's) argument ("Invalid learning rate: -1.0"), naming the
    argument it was about (``optimizer.init_args.lr=-1.0``) where the callable's arguments show which."""
    said = str(error)
    value = said.rpartition(": ")[2].strip()
    words = said.lower().replace("_", " ")
    named = [k for k, v in getattr(built, "keywords", {}).items() if value and value in (str(v), repr(v))] or [
        k for k in getattr(built, "keywords", {}) if ALIASES.get(k, k.replace("_", " ").rstrip("s")) in words]
    if len(named) > 1:
        named = [k for k in named if ALIASES.get(k, k.replace("_", " ").rstrip("s")) in words] or named
    if not named:
        return ArgumentValueError(InceptionClassifier, said, **{name: ...})
    key = named[0]
    return ArgumentValueError(InceptionClassifier, said, **{f"{name}.init_args.{key}": built.keywords[key]})


class InceptionClassifier(LightningModule):
    """Image classification with an Inception network and its auxiliary classifiers.

    Args:
        net: the network (``class_path``/``init_args`` in YAML); its ``num_classes``, ``in_channels`` and
            ``image_size`` are linked from the DataModule.
        aux_weight: weight of each aux head's loss in the total (paper, Section 5: 0.3). With 0 the heads still
            get gradients of zero and stay in the graph (no unused parameters under DDP).
        label_smoothing: cross-entropy label smoothing (0: the paper).
        optimizer: e.g. ``torch.optim.SGD`` with ``momentum: 0.9`` (the paper's recipe).
        lr_scheduler: with ``lr_interval: epoch``, a scheduler built as ``lr_scheduler(optimizer)`` and stepped once
            per epoch, e.g. ``torch.optim.lr_scheduler.StepLR`` with ``step_size: 8, gamma: 0.96`` (the paper: LR x
            0.96 every 8 epochs); with ``lr_interval: step``, one built as ``lr_scheduler(optimizer, total_steps)``
            (the run's optimizer steps) and stepped after every step, e.g. ``inception_lab.schedules.WarmupCosineLR``.
        lr_interval: when the scheduler steps, and so how it is built (above).
        lr_reference_batch: the optimizer's ``lr`` is given per this many images (BVLC: "0.01 per 32"); the run
            trains at ``lr x global batch / lr_reference_batch`` (linear scaling), the global batch being
            devices x nodes x ``data.batch_size`` x gradient accumulation (:meth:`global_batch`); the run's
            ``config.yaml`` and ``summary.json`` (``optimization``) record what it resolved to. None: ``lr`` as given.
        bias_lr_mult, bias_decay_mult: the biases' learning rate and weight decay as multiples of the others'
            (Caffe's ``lr_mult`` / ``decay_mult`` of a layer's second blob; BVLC's GoogLeNet: 2 and 0). With both 1,
            one parameter group.
        channels_last: keep weights and activations in NHWC (faster convolutions and pooling; same maths).
        compile: ``torch.compile`` the network in place (``nn.Module.compile``: state_dict keys unchanged, so
            checkpoints load into an eager model); pays off on GPUs.
        compile_mode: torch.compile's mode: ``default``, ``reduce-overhead`` (CUDA graphs: the launches of a step
            replayed as one) or ``max-autotune`` (autotuned kernels, and CUDA graphs).
        views_per_forward: test-time views (``data.init_args.test_views``) evaluated per forward pass: an image's
            144 views and a batch's images are cut into chunks of this many, so memory is bounded whatever the
            protocol (256 views at 224: about the activations of an eval batch of 256).

    ``test_step`` and ``predict_step`` return each image's class probabilities (averaged over its views), which
    ``inception_lab.run.predictions.ProbabilityWriter`` stores.
    """

    def __init__(self, net: nn.Module, aux_weight: NonNegativeFloat = 0.3, label_smoothing: UnitInterval = 0.0,
                 optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | Callable[[Optimizer, int], LRScheduler] | None = None,
                 lr_interval: Literal["epoch", "step"] = "epoch", lr_reference_batch: PositiveInt | None = None,
                 bias_lr_mult: PositiveFloat = 1.0, bias_decay_mult: NonNegativeFloat = 1.0, channels_last: bool = True,
                 compile: bool = False, compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default",
                 views_per_forward: PositiveInt = 256) -> None:
        check_arguments(InceptionClassifier, locals())
        super().__init__()
        # Under LightningCLI the hyperparameters are the parsed config (the network's class_path and init_args), so a
        # checkpoint rebuilds its model alone (load_from_checkpoint, `test --ckpt_path X`); built in Python, the
        # network and the callables are objects, not hyperparameters.
        self.save_hyperparameters(ignore=[] if _given_hyperparameters.get() else ["net", "optimizer", "lr_scheduler"])
        self.net = net
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_interval = lr_interval
        self.lr_reference_batch = lr_reference_batch
        self.bias_lr_mult, self.bias_decay_mult = float(bias_lr_mult), float(bias_decay_mult)
        self.channels_last = channels_last
        self.heads = ["main", *(f"aux{i + 1}" for i in range(len(getattr(net, "aux_positions", ()))))]
        # metrics[stage][head] (keyed "train_acc", not "train", which nn.Module owns): torchmetrics accumulate on the
        # device; nothing syncs with the host per step
        self.metrics = nn.ModuleDict({f"{stage}_acc": nn.ModuleDict({head: _accuracy(net.num_classes)
                                                                      for head in self.heads}) for stage in STAGES})
        # nan_strategy="disable": the NaN check is a device sync per step; a NaN loss shows in the epoch mean anyway
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric(nan_strategy="disable") for stage in STAGES})
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume from checkpoint
        self.losses["train_loss"].persistent(True)  # and the epoch's running train metrics a mid-epoch resume
        self.metrics["train_acc"].apply(lambda m: m.persistent(True) if hasattr(m, "persistent") else None)
        self.compile_net, self.compile_mode = compile, compile_mode
        self.views_per_forward = int(views_per_forward)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def __deepcopy__(self, memo: dict) -> InceptionClassifier:
        """A copy (EMAWeightAveraging's averaged model) shares the optimizer and scheduler callables: the CLI's hold
        jsonargparse's instantiator, and through it the trainer, whose DDP launcher holds its child processes."""
        memo.update({id(self.optimizer): self.optimizer, id(self.lr_scheduler): self.lr_scheduler})
        clone = memo[id(self)] = type(self).__new__(type(self))
        clone.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def configure_model(self) -> None:
        if self.compile_net and not getattr(self, "_compiled", False):
            self.net.compile(mode=self.compile_mode)
            self._compiled = True

    # ---- forward and losses -------------------------------------------------------------------------------------
    def forward(self, x: Tensor | ViewBatch) -> Tensor:
        """Class probabilities ``(N, classes)``; test views (a :class:`ViewBatch`, or a float ``(N, V, C, H, W)``)
        averaged over each image's V views."""
        if isinstance(x, ViewBatch) or x.ndim == 5:
            return self._view_probs(x)[0]
        return self.net(x).logits.softmax(-1)

    def _view_probs(self, x: Tensor | ViewBatch, with_aux: bool = False) -> list[Tensor]:
        """Per head (main, then aux): ``(N, classes)`` probabilities averaged over the views (Section 7: softmax
        probabilities averaged over crops), the views evaluated ``views_per_forward`` at a time."""
        views = x if isinstance(x, ViewBatch) else ViewBatch(x)
        n, v = views.shape[:2]
        heads: list[list[Tensor]] = []
        for chunk in views.chunks(self.views_per_forward):
            out = self.net(chunk, with_aux=with_aux)
            for i, logits in enumerate((out.logits, *out.aux)):
                if i == len(heads):
                    heads.append([])
                heads[i].append(logits.float().softmax(-1))
        return [torch.cat(probs).view(n, v, -1).mean(1) for probs in heads]

    def _evaluate(self, batch: tuple[Tensor | ViewBatch, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """(the loss to optimize, the main head's logits or log-probabilities); the stage's metrics updated."""
        x, y = batch
        if isinstance(x, ViewBatch) or x.ndim == 5:  # test-time views: probabilities averaged per image
            probs = self._view_probs(x, with_aux=True)
            logits, aux = probs[0].log(), tuple(p.log() for p in probs[1:])
            loss = F.nll_loss(logits, y)
            total = loss
        else:
            out = self.net(x, with_aux=True)
            logits, aux = out.logits, out.aux
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            total = loss + self.aux_weight * sum(
                (F.cross_entropy(a, y, label_smoothing=self.label_smoothing) for a in aux), logits.new_zeros(()))
        # the weight as a device tensor: a Python number would be copied from the host at every step
        self.losses[f"{stage}_loss"].update(loss.detach(), weight=loss.new_full((), y.numel()))
        metrics = self.metrics[f"{stage}_acc"]
        for head, head_logits in zip(self.heads, (logits, *aux)):
            metrics[head].update(head_logits.detach(), y)
        return total, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._evaluate(batch, "train")[0]
        # to the logger only: a progress-bar value is read on the host after every step (a device sync)
        self.log("train/loss_total", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor | ViewBatch, Tensor], batch_idx: int) -> Tensor:
        _, logits = self._evaluate(batch, "test")
        return logits.detach().softmax(-1)  # softmax of log-probabilities: the averaged probabilities themselves

    def predict_step(self, batch: tuple[Tensor | ViewBatch, Tensor], batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    # ---- metrics: computed (and synced across ranks) once per epoch ---------------------------------------------
    def _log_epoch(self, stage: str) -> dict[str, Tensor]:
        values = {f"{stage}/loss": self.losses[f"{stage}_loss"].compute()}
        for head in self.heads:
            prefix = stage if head == "main" else f"{stage}/{head}"
            values.update({f"{prefix}/{k}": v for k, v in self.metrics[f"{stage}_acc"][head].compute().items()})
            self.metrics[f"{stage}_acc"][head].reset()
        self.losses[f"{stage}_loss"].reset()
        self.log_dict(values, prog_bar=False, sync_dist=False)  # already synced by torchmetrics
        return values

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val")
        if self.trainer.sanity_checking:  # an untrained model's accuracy is no "best so far"
            return
        self.val_acc_best.update(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ---- optimization -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer(self._param_groups())
        scale = self.optimization()["lr_scale"]
        for group in optimizer.param_groups:  # the run's LR, and the biases' own multipliers (Caffe's lr_mult)
            bias = group.get("name") == "biases"
            group["lr"] = group["lr"] * scale * (self.bias_lr_mult if bias else 1.0)
            if bias and "weight_decay" in group:
                group["weight_decay"] = group["weight_decay"] * self.bias_decay_mult
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self._scheduler(optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_interval}}

    def _param_groups(self) -> Any:
        """All parameters in one group, or, where the biases have their own multipliers, two: ``weights`` and
        ``biases`` (every conv's and linear layer's bias, and batch norm's shift)."""
        if self.bias_lr_mult == 1.0 and self.bias_decay_mult == 1.0:
            return self.parameters()
        named = list(self.named_parameters())
        biases = [p for name, p in named if name.endswith(".bias")]
        weights = [p for name, p in named if not name.endswith(".bias")]
        return [{"params": weights, "name": "weights"}, {"params": biases, "name": "biases"}]

    def global_batch(self) -> int:
        """Images per optimizer step across the run: devices x nodes x the DataModule's batch x accumulation."""
        trainer = self.trainer
        batch = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
        if batch is None:
            raise ArgumentValueError(InceptionClassifier, "needs a DataModule with a batch_size to scale the LR to "
                                     "the global batch", lr_reference_batch=self.lr_reference_batch)
        return int(trainer.world_size * batch * trainer.accumulate_grad_batches)

    def optimization(self) -> dict[str, Any]:
        """What the run's LR resolves to (the one place it is scaled): ``lr_scale`` (global batch /
        ``lr_reference_batch``, 1 without one), and the figures behind it, for the run's record."""
        if self.lr_reference_batch is None:
            return {"lr_scale": 1.0}
        trainer = self.trainer
        batch = self.global_batch()
        given = getattr(self.optimizer, "keywords", {}).get("lr")  # jsonargparse's callable: its init_args
        lr = {"lr_given": given, "lr": given * batch / self.lr_reference_batch} if isinstance(given, float) else {}
        return {**lr, "lr_scale": batch / self.lr_reference_batch, "lr_reference_batch": self.lr_reference_batch,
                "global_batch": batch, "devices": trainer.num_devices, "nodes": trainer.num_nodes,
                "batch_size": batch // (trainer.world_size * trainer.accumulate_grad_batches),
                "accumulate_grad_batches": trainer.accumulate_grad_batches}

    def _scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        args = (optimizer,) if self.lr_interval == "epoch" else (optimizer, total_steps)
        try:
            return self.lr_scheduler(*args)
        except TypeError as error:  # e.g. WarmupCosineLR (which needs the run's length) stepped per epoch
            raise ArgumentValueError(InceptionClassifier, f"does not fit lr_scheduler: {error} (a scheduler stepped "
                                     "per step is built with the run's length: lr_interval: step)",
                                     lr_interval=self.lr_interval) from None

    def check_optimization(self) -> None:
        """The optimizer and its scheduler built once and thrown away, so that a bad argument (``lr: -1``) is one line
        before a run is written (the CLI calls it before the run directory is touched)."""
        try:
            optimizer = self.optimizer(self.parameters())
        except (ValueError, TypeError) as error:
            raise _refused("optimizer", self.optimizer, error) from None
        if self.lr_scheduler is not None:
            try:
                self._scheduler(optimizer, 1000)
            except ArgumentValueError:
                raise
            except (ValueError, TypeError, ZeroDivisionError) as error:
                raise _refused("lr_scheduler", self.lr_scheduler, error) from None

    def cost(self) -> dict[str, int]:
        """Trainable params (aux heads included) and inference multiply-adds per image."""
        net = self.net
        macs = summarize(net, net.image_size, net.in_channels)["total_macs"] if isinstance(net, Inception) else 0
        return {"params": sum(p.numel() for p in self.parameters()), "macs": macs}
