"""Stage-2 throughput: Mapping Network meta-steps/s and Finetuning Network clips/s.

* Mapping Network: one outer meta step (``deepfakemae.metalearning.meta_step``: K inner SGD
  steps, T_ref accuracy after each, meta-train + meta-test terms, backward, SGD update) with ``--map-batch``
  images per set (meta-train, meta-test, mix, T_ref) at ``--map-size``; second order vs first order.
* Finetuning Network: one AdamW training step (forward, backward, optimizer) of
  ``FinetuneClassifier`` on clips of ``--frames`` frames, for each MAE preset.

On CUDA each row also gives the peak memory its steps allocated (``torch.cuda.max_memory_allocated``,
reset before each benchmark).

    python bench/stage2.py                                   # CPU defaults, ~minutes
    python bench/stage2.py --presets mae_vit_tiny_patch16_112 --steps 3
    python bench/stage2.py --device cuda --ft-batch 16 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from deepfakemae.metalearning import MappingLoss, meta_step
from deepfakemae.models.classifier import FinetuneClassifier
from deepfakemae.models.mae import create_mae
from deepfakemae.models.mapping_network import MappingNetwork


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory count (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_note(device: torch.device) -> str:
    """``", peak N MiB"``: memory allocated at most since `reset_peak` (CUDA; else empty)."""
    if device.type != "cuda":
        return ""
    return f", peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"


def _map_batch(n: int, size: int, map_size: int, device: torch.device) -> dict:
    return {
        "image": torch.randn(n, 3, size, size, device=device),
        "label": torch.arange(n, device=device) % 2,
        "map_target": torch.randn(n, 3, map_size, map_size, device=device),
    }


def bench_mapping(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, str]]:
    torch.manual_seed(0)
    net = MappingNetwork().to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)  # paper §4.1
    n, size = args.map_batch, args.map_size
    train, test, mix, ref = (_map_batch(n, size, net.map_size, device) for _ in range(4))
    loss_fn = MappingLoss()
    rows = []
    for first_order in (False, True):

        def step(first_order: bool = first_order) -> None:
            params, buffers = dict(net.named_parameters()), dict(net.named_buffers())
            res = meta_step(net, params, buffers, train, test, ref, loss_fn, inner_steps=args.inner_steps,
                            inner_lr=0.01, first_order=first_order, mix_batch=mix)
            opt.zero_grad(set_to_none=True)
            res.loss.backward()
            opt.step()

        reset_peak(device)
        sec = time_steps(step, args.steps, args.warmup, device)
        name = f"mapping meta-step {'first' if first_order else 'second'}-order"
        rows.append((name, 1.0 / sec, f"K={args.inner_steps}, {n}/set @ {size}px, {sec:.2f} s/step"
                     + peak_note(device)))

    def plain() -> None:  # reference: one ordinary training step on meta-train ∪ meta-test
        batch = torch.cat([train["image"], test["image"]])
        logit, mapped = net(batch)
        loss = F.binary_cross_entropy_with_logits(logit, torch.cat([train["label"], test["label"]]).float())
        loss = loss + F.mse_loss(mapped, torch.cat([train["map_target"], test["map_target"]]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_peak(device)
    sec = time_steps(plain, args.steps, args.warmup, device)
    rows.append(("mapping plain step (no meta)", 1.0 / sec,
                 f"{2 * n} images @ {size}px, {sec:.2f} s/step" + peak_note(device)))
    return rows


def bench_finetune(args: argparse.Namespace, device: torch.device) -> list[tuple[str, float, str]]:
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        mae = create_mae(preset)
        size = mae.img_size
        clf = FinetuneClassifier(mae).to(device).train()
        opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-3)  # paper §4.1
        b = args.ft_batch if "base" not in preset else args.ft_batch_base
        clips = torch.randn(b, args.frames, 3, size, size, device=device)
        labels = torch.arange(b, device=device) % 2

        def step(clf: FinetuneClassifier = clf, opt: torch.optim.Optimizer = opt,
                 clips: torch.Tensor = clips, labels: torch.Tensor = labels) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(clf(clips), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps = args.steps if "base" not in preset else args.steps_base
        reset_peak(device)
        sec = time_steps(step, steps, min(args.warmup, steps), device)
        rows.append((f"finetune {preset}", b / sec, f"{b} clips × {args.frames} frames @ {size}px, "
                     f"{sec:.2f} s/step = {1.0 / sec:.2f} steps/s" + peak_note(device)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--steps", type=int, default=2, help="timed steps (mapping, tiny MAE)")
    p.add_argument("--steps-base", type=int, default=1, help="timed steps for ViT-B/16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--map-batch", type=int, default=8, help="images per set (meta-train/test/mix/ref)")
    p.add_argument("--map-size", type=int, default=224)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--ft-batch", type=int, default=4)
    p.add_argument("--ft-batch-base", type=int, default=1)
    p.add_argument("--presets", nargs="+", default=["mae_vit_tiny_patch16_112", "mae_vit_base_patch16"])
    p.add_argument("--skip", nargs="*", default=[], choices=["mapping", "finetune"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    if "mapping" not in args.skip:
        rows += bench_mapping(args, device)
    if "finetune" not in args.skip:
        rows += bench_finetune(args, device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'benchmark':42s} {'per s':>9s}  setting")
    for name, rate, note in rows:
        unit = "steps" if name.startswith("mapping") else "clips"
        print(f"{name:42s} {rate:9.3f}  {unit}/s; {note}")


if __name__ == "__main__":
    main()
