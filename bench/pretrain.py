"""Stage-1 pre-training throughput: images/s, FLOP estimate, fraction of measured matmul speed.

For each preset (batch 8; ViT-B/16 at 224, the paper configs' preset) one full AdamW training step
(forward, backward, optimizer) is timed under four masks, all fixed for the run:

* ``facial_part 0.5``   paper masking (Algorithm 1 bands, synthetic realistic landmarks): uneven
                        counts per sample, default ``packed`` exact path;
* ``  same, padded``     the same masks through the simpler padded path (every layer on Vmax);
* ``equal @ mean``      every sample masks the mean count of the facial-part masks: the cost the
                        uneven batch would have without any padding;
* ``random 0.75``       MAE's random masking.

The padding overhead is ``time(uneven) / time(equal @ mean) - 1``. On CUDA the same is run
under bf16 autocast and the MFU is reported against the measured bf16 matmul throughput.

    python bench/pretrain.py                 # tiny + ViT-B/16, 3 timed steps each
    python bench/pretrain.py --steps 10 --presets mae_vit_base_patch16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from deepfakemae.masking import FacialPartMasker, synthetic_landmarks
from deepfakemae.models.mae import MaskedAutoencoderViT, create_mae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Measured dense matmul throughput (FLOP/s) for n×n @ n×n."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _transformer_flops(tokens: int, dim: int, depth: int, mlp_ratio: float) -> float:
    """Forward FLOPs of ``depth`` ViT blocks on one sequence (matmuls only)."""
    linear = 2 * tokens * dim * dim * (4 + 2 * mlp_ratio)  # qkv + proj + 2 MLP layers
    attention = 4 * tokens * tokens * dim  # QK^T and AV
    return depth * (linear + attention)


def train_flops_per_step(model: MaskedAutoencoderViT, mask: torch.Tensor) -> float:
    """Estimated FLOPs of one training step (forward × 3) for the real (unpadded) token counts."""
    cfg = model
    L, P = model.num_patches, model.patch_size**2 * model.in_chans
    D, Dd = cfg.embed_dim, cfg.decoder_embed_dim
    mlp = cfg.blocks[0].mlp.fc1.out_features / D
    depth, ddepth = len(cfg.blocks), len(cfg.decoder_blocks)
    total = 0.0
    for visible in (~mask).sum(1).tolist():
        n = 1 + visible
        total += 2 * L * P * D  # patch embedding (all patches)
        total += _transformer_flops(n, D, depth, mlp)
        total += 2 * n * D * Dd  # decoder embed
        total += _transformer_flops(1 + L, Dd, ddepth, mlp)
        total += 2 * (1 + L) * Dd * P  # pixel prediction
    return 3 * total


def time_interleaved(
    model: MaskedAutoencoderViT,
    imgs: torch.Tensor,
    configs: list[tuple[str, torch.Tensor, str]],
    steps: int,
    autocast: bool,
) -> dict[str, float]:
    """Median seconds per AdamW training step for each (label, mask, uneven mode).

    One warm-up step per configuration, then ``steps`` rounds that run one step of every
    configuration in turn, so load from other processes on a shared machine hits all of them
    alike; the median resists such bursts better than the mean.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    ctx = (
        torch.autocast(imgs.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )

    def step(mask: torch.Tensor, uneven: str) -> float:
        model.uneven = uneven
        sync(imgs.device)
        t0 = time.perf_counter()
        with ctx:
            loss = model(imgs, mask)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(imgs.device)
        return time.perf_counter() - t0

    for _, mask, uneven in configs:
        step(mask, uneven)
    times: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    for _ in range(steps):
        for label, mask, uneven in configs:
            times[label].append(step(mask, uneven))
    model.uneven = "packed"
    return {label: statistics.median(t) for label, t in times.items()}


def masks_for(model: MaskedAutoencoderViT, batch: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Fixed masks: facial-part (uneven), equal count at its mean, random 0.75."""
    size, patch = model.img_size, model.patch_size
    g = torch.Generator().manual_seed(seed)
    landmarks = synthetic_landmarks(batch, size, g)
    facial = FacialPartMasker("facial_part", 0.5, "algorithm1", size, patch)(landmarks, g).mask
    mean_k = round(float(facial.sum(1).float().mean()))
    equal = FacialPartMasker("random", mean_k / model.num_patches, "algorithm1", size, patch)(landmarks, g).mask
    rand = FacialPartMasker("random", 0.75, "algorithm1", size, patch)(landmarks, g).mask
    return {"facial_part 0.5": facial.to(device), "equal @ mean": equal.to(device), "random 0.75": rand.to(device)}


def bench_preset(name: str, args: argparse.Namespace, device: torch.device, mm: dict[str, float]) -> None:
    torch.manual_seed(0)
    model = create_mae(name).to(device).train()
    imgs = torch.randn(args.batch, 3, model.img_size, model.img_size, device=device)
    masks = masks_for(model, args.batch, device, args.seed)
    counts = masks["facial_part 0.5"].sum(1).tolist()
    print(f"\n== {name}  img {model.img_size}  batch {args.batch}  L={model.num_patches}  "
          f"params {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M")
    print(f"   facial_part masked counts per sample: {counts}  (mean {sum(counts) / len(counts):.1f}, "
          f"equal @ mean: {int(masks['equal @ mean'][0].sum())})")
    configs = [
        ("facial_part 0.5", masks["facial_part 0.5"], "packed"),
        ("  same, padded", masks["facial_part 0.5"], "padded"),
        ("equal @ mean", masks["equal @ mean"], "packed"),
        ("random 0.75", masks["random 0.75"], "packed"),
    ]
    precisions = [("fp32", False)] + ([("bf16", True)] if device.type == "cuda" else [])
    for prec, autocast in precisions:
        ref = mm[prec]
        times = time_interleaved(model, imgs, configs, args.steps, autocast)
        print(f"   [{prec}] {'mask':<17}{'s/step':>8}{'img/s':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}{'of matmul':>11}")
        for label, mask, _ in configs:
            sec, flops = times[label], train_flops_per_step(model, mask)
            print(f"   [{prec}] {label:<17}{sec:>8.3f}{args.batch / sec:>9.1f}{flops / 1e9:>12.1f}"
                  f"{flops / sec / 1e9:>9.1f}{flops / sec / ref:>10.1%}")
        over = times["facial_part 0.5"] / times["equal @ mean"] - 1
        over_pad = times["  same, padded"] / times["equal @ mean"] - 1
        print(f"   [{prec}] padding overhead vs equal @ mean: packed {over:+.1%}, padded {over_pad:+.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--presets", default="mae_vit_tiny_patch16_112,mae_vit_base_patch16")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}  torch {torch.__version__}")
    n = 2048 if device.type == "cpu" else 8192
    mm = {"fp32": matmul_flops_per_s(device, torch.float32, n, 5 if device.type == "cpu" else 20)}
    print(f"matmul {n}² fp32: {mm['fp32'] / 1e9:.1f} GFLOP/s")
    if device.type == "cuda":
        mm["bf16"] = matmul_flops_per_s(device, torch.bfloat16, n, 50)
        print(f"matmul {n}² bf16: {mm['bf16'] / 1e12:.1f} TFLOP/s (the bf16 'of matmul' column is MFU "
              "against this measured peak)")
    for preset in args.presets.split(","):
        bench_preset(preset.strip(), args, device, mm)


if __name__ == "__main__":
    main()
