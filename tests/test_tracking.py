"""W&B beside the run directory (offline at once without a server) and real DDP on 2 CPU processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from inception_lab import tracking
from inception_lab.run.files import read_summary as summary
from inception_lab.tracking import WandbOptions, resolve_mode
from tests.conftest import REPO, probe_path, short
from tests.wandb_records import run_info

QUICK = short(batches=4)


def test_no_api_key_goes_offline_at_once_without_probing(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(tracking, "_probe", lambda *a, **k: pytest.fail("probed without an API key"))
    assert resolve_mode(WandbOptions(), tmp_path) == "offline"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no W&B API key" in out[0] and "wandb sync" in out[0]
    assert os.environ["WANDB_MODE"] == "offline"  # DDP ranks and wandb itself see the same decision


def test_a_refused_connection_goes_offline_at_once(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    with socket.create_server(("127.0.0.1", 0)) as closed:  # a port that nothing listens on once this closes
        port = closed.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert resolve_mode(WandbOptions(), tmp_path) == "offline"
    assert f"W&B server http://127.0.0.1:{port} is unreachable (" in capsys.readouterr().out


def test_wandb_mode_is_respected(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(WandbOptions(mode="online"), tmp_path) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")  # --wandb.enabled=false is the user's word, over the environment
    assert resolve_mode(WandbOptions(enabled=False), tmp_path) == "disabled"
    assert resolve_mode(WandbOptions(mode="disabled"), tmp_path) == "offline"


@pytest.mark.slow
def test_wandb_run_holds_config_summary_and_grouping(tmp_path: Path, cli) -> None:
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *QUICK, "--model.aux_weight=0.1",
                        "--run_dir", str(run_dir)])
    assert code == 0, err[-3000:]
    info = run_info(run_dir)
    assert info["config"]["model"]["net"]["init_args"]["head"] == "gap"  # model.net.init_args.head
    assert info["config"]["model"]["aux_weight"] == 0.1
    assert info["group"] == "quickstart" and "quickstart" in info["tags"] and "aux_weight=0.1" in info["tags"]
    assert info["summary"]["variant"] == {"model.aux_weight": 0.1}
    record = summary(run_dir)
    for key in ("params", "macs", "throughput_img_per_s"):
        assert info["summary"][key] == pytest.approx(record[key])
    assert info["summary"]["val/acc_best"] == pytest.approx(record["metrics"]["val/acc_best"])
    # the fit's test pass logs into the same W&B run, which then closes: one run, with the held-out answer
    assert info["summary"]["test/acc"] == pytest.approx(record["metrics"]["test/acc"])
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_one_process_two_fits_make_two_runs(tmp_path: Path, monkeypatch) -> None:
    from inception_lab.cli import cli_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("a", "b"):
        assert cli_main(["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *short(batches=2),
                         "--run_dir", str(tmp_path / name)]) == 0
    ids = {run_info(tmp_path / name)["id"] for name in ("a", "b")}
    assert len(ids) == 2


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path, run_cli, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "ddp"
    # the launcher re-runs the CLI for rank 1 with this environment
    monkeypatch.setenv("PYTHONPATH", probe_path())
    # the LR given per 128 images: 2 ranks x 64 train at the config's (quickstart's) LR
    run_cli("fit", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
            "--model.lr_reference_batch=128", "--trainer.callbacks+=ddp_probe.RankProbe", "--run_dir",
            str(run_dir), cwd=tmp_path, timeout=600)
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["config_sha"] == ranks[1]["config_sha"]
    a, b = (set(r["train_indices"]) for r in ranks)
    assert len(a & b) <= 1 and len(a | b) >= 1197 - 1  # disjoint shards (DistributedSampler pads by <= 1)
    record = summary(run_dir)
    assert record["status"] == "finished"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, made on rank 0
    assert len(list((run_dir / "checkpoints").glob("last*.ckpt"))) == 1
    # the synced val accuracy covers the whole val set: the same number a single process gets with those weights
    code, _, err = cli(["validate", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.accelerator=cpu",
                        "--ckpt_path", str(run_dir / "checkpoints/last.ckpt"), "--run_dir", str(tmp_path / "single")])
    assert code == 0, err[-3000:]
    validated = summary(tmp_path / "single")["metrics"]["validate/acc"]
    assert validated == pytest.approx(record["metrics"]["val/acc"], abs=1e-6)
    # so does the fit's test pass, on both ranks, of its best checkpoint: what one process tests it at
    code, _, err = cli(["test", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.accelerator=cpu",
                        "--ckpt_path", str(run_dir / record["best_checkpoint"]), "--run_dir", str(tmp_path / "test")])
    assert code == 0, err[-3000:]
    tested = summary(tmp_path / "test")["metrics"]["test/acc"]
    assert tested == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)
    # predict on both ranks: one predictions.csv (the result line's), each image once in dataset order, as one
    # process predicts it (the shards it was merged from gone)
    best = str(run_dir / record["best_checkpoint"])
    two = run_cli("predict", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.accelerator=cpu",
                  "--trainer.devices=2", "--trainer.strategy=ddp", "--ckpt_path", best, "--run_dir",
                  str(tmp_path / "predict2"), cwd=tmp_path, timeout=600)
    code, _, err = cli(["predict", "--config", str(REPO / "experiments/quickstart.yaml"), "--trainer.accelerator=cpu",
                        "--ckpt_path", best, "--run_dir", str(tmp_path / "predict1")])
    assert code == 0, err[-3000:]
    rows = [[line.split(",")[:3] for line in (tmp_path / d / "predictions.csv").read_text().splitlines()[1:]]
            for d in ("predict2", "predict1")]
    assert rows[0] == rows[1] and [int(r[0]) for r in rows[0]] == list(range(300))  # test_size
    assert two.stdout.strip().endswith(f"predictions.csv ({len(rows[1])} rows)"), two.stdout[-2000:]
    assert not list((tmp_path / "predict2").glob("predictions.rank*.csv"))
    # the same experiment on one process resolves to the LR in the ratio of the global batches (64 / 128), and
    # both ranks step at the LR rank 0 recorded
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *short(batches=1, val_batches=1),
                        "--trainer.accelerator=cpu", "--model.lr_reference_batch=128", "--run_dir",
                        str(tmp_path / "one")])
    assert code == 0, err[-3000:]
    one, two = summary(tmp_path / "one")["optimization"], record["optimization"]
    assert (one["global_batch"], two["global_batch"]) == (64, 128) and two["devices"] == 2
    assert one["lr"] / two["lr"] == pytest.approx(64 / 128) and two["lr"] == pytest.approx(two["lr_given"])
    assert [r["lrs"] for r in ranks] == [[two["lr"]]] * 2
    for run, resolved in ((tmp_path / "one", one), (run_dir, two)):  # the config as the run resolved it
        assert (run / "config.yaml").read_text().splitlines()[-1] == (
            f"# resolved for this run: global batch {resolved['global_batch']} ({resolved['devices']} devices x 1 "
            f"nodes x batch 64 x accumulation 1): the optimizer's lr x {resolved['lr_scale']:g} (lr_reference_batch "
            f"128) = {resolved['lr']:g}")
