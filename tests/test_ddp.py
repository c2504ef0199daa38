"""The multi-process paths on the CPU: the Mapping Network's second-order meta step under
2-process DDP (gloo), and a two-"node" torchrun rendezvous on localhost through the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from deepfakemae.masking import synthetic_landmarks
from deepfakemae.models.mae import create_mae
from deepfakemae.modules.mapping import MappingModule

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
RANKS = 2


def shard(index: int) -> dict:
    """One rank's batch: 4 real videos and 2 videos of each of two fake domains (8 frames)."""
    g = torch.Generator().manual_seed(100 + index)
    domains = [0, 0, 0, 0, 1, 1, 2, 2]
    return {"image": torch.randn(8, 3, SIZE, SIZE, generator=g),
            "landmarks": synthetic_landmarks(8, SIZE, generator=g),
            "label": torch.tensor([int(d > 0) for d in domains]),
            "domain": torch.tensor(domains),
            "video_key": [f"s{index}/d{d}/v{i}" for i, d in enumerate(domains)],
            "frame_index": torch.zeros(8, dtype=torch.long)}


def mapping_module() -> MappingModule:
    """A Mapping Network (random init, second-order meta step) with a micro MAE for targets
    (the unmasked target: deterministic, so both runs see the same targets)."""
    torch.manual_seed(0)
    module = MappingModule(image_log_every_n_steps=0, inner_steps=2, target="unmasked")
    module.attach_mae(create_mae("mae_vit_micro"))
    return module


class RecordStep(Callback):
    """Saves each rank's gradients before the first optimizer step and its weights after it."""

    def __init__(self, out: str):
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.net.named_parameters()}
            torch.save(grads, f"{self.out}/grads_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}
        torch.save(params, f"{self.out}/params_rank{trainer.global_rank}_step{trainer.global_step}.pt")


@pytest.mark.slow
def test_ddp_meta_step_equals_one_process_accumulating_the_shards(tmp_path):
    """Two gloo ranks, each meta-splitting its own shard (second order, K=2), give the same
    averaged gradient and update as one process that accumulates both shards' meta-losses."""
    module = mapping_module()
    batches = [shard(i) for i in range(2 * RANKS)]  # step s, rank r: batch s * RANKS + r
    trainer = Trainer(accelerator="cpu", devices=RANKS, strategy="ddp_spawn", max_steps=2,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0,
                      callbacks=[RecordStep(str(tmp_path))])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))

    reference = mapping_module()
    total = 0.0
    for rank in range(RANKS):
        batch = dict(batches[rank])
        batch["map_target"] = reference.map_target(batch["image"], batch["landmarks"])
        loss, logs = reference.training_loss(batch, step=0, rank=rank)
        assert "train/meta/selected_step" in logs  # a real meta step, not the plain fallback
        total = total + loss / RANKS
    total.backward()
    hp = reference.hparams
    for rank in range(RANKS):
        grads = torch.load(tmp_path / f"grads_rank{rank}.pt")
        params = torch.load(tmp_path / f"params_rank{rank}_step1.pt")
        for name, p in reference.net.named_parameters():
            assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-6), (rank, name)
            # SGD's first step: momentum buffer = gradient + weight decay, lr at step 0 = lr
            expected = p - hp.lr * (p.grad + hp.weight_decay * p)
            assert torch.allclose(params[name], expected, rtol=1e-4, atol=1e-6), (rank, name)
    alone = mapping_module()  # rank 0's own meta-gradient: what a missing all-reduce would leave
    batch = dict(batches[0], map_target=alone.map_target(batches[0]["image"],
                                                          batches[0]["landmarks"]))
    alone.training_loss(batch, step=0, rank=0)[0].backward()
    grads = torch.load(tmp_path / "grads_rank0.pt")
    assert not all(torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-6)
                   for n, p in alone.net.named_parameters())
    last = [torch.load(tmp_path / f"params_rank{r}_step2.pt") for r in range(RANKS)]
    assert all(torch.equal(last[0][n], last[1][n]) for n in last[0])  # ranks stay in step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FIT = ["-m", "deepfakemae.cli", "fit", "-c", str(REPO / "experiments/pretrain.yaml"),
       "--model.init_args.preset=mae_vit_micro", "--data.init_args.img_size=64",
       "--model.init_args.init_weights=null",
       "--data.init_args.num_workers=0", "--data.init_args.batch_size=2",
       "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.strategy=ddp",
       "--trainer.max_steps=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _launches(kind: str, port: str) -> list[tuple[list[str], dict[str, str]]]:
    """The processes a launcher starts for the multi-process lines of docs/DISTRIBUTED.md:
    (argv, extra env)."""
    py = sys.executable
    torchrun = [py, "-m", "torch.distributed.run", "--master_addr", "127.0.0.1",
                "--master_port", port]
    if kind == "torchrun_one_node":  # torchrun --nproc_per_node=2 ... --trainer.devices 2
        return [([*torchrun, "--nproc_per_node", "2", *FIT, "--trainer.devices=2"], {})]
    if kind == "torchrun_two_nodes":  # one torchrun per node, --node_rank 0 / 1
        return [([*torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                  *FIT, "--trainer.devices=1", "--trainer.num_nodes=2"], {})
                for rank in range(2)]
    # srun --nodes=2 --ntasks-per-node=1: srun starts each task with these variables
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
             "SLURM_JOB_NAME": "deepfakemae-test", "SLURM_JOB_ID": "4242",
             "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    return [([py, *FIT, "--trainer.devices=1", "--trainer.num_nodes=2"],
             dict(slurm, SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank)))
            for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchrun_one_node", "torchrun_two_nodes", "slurm_two_nodes"])
def test_readme_multi_process_launches_train_on_localhost(tmp_path, ffpp_cache, kind):
    """docs/DISTRIBUTED.md's multi-GPU and multi-node lines, on CPU over loopback: ``torchrun
    --nproc_per_node 2``, two torchrun "nodes" (one process each, ``--node_rank 0/1``) and two
    tasks as ``srun`` starts them on two nodes; each trains stage 1 for two DDP steps."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "ffpp_c23").symlink_to(ffpp_cache)
    env = dict(os.environ, OMP_NUM_THREADS="1", CACHE_DIR=str(cache_dir),
               RUN_DIR=str(tmp_path / "runs"), WANDB_MODE="offline")
    procs = [subprocess.Popen(argv, env=dict(env, **extra), cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for argv, extra in _launches(kind, str(_free_port()))]
    outputs = []
    try:
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    joined = "\n".join(outputs)
    for rank in range(2):  # Lightning's line per process: world size 2
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in joined, joined[-3000:]
    ckpt = torch.load(tmp_path / "runs/pretrain/checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
