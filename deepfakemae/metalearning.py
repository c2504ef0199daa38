"""Meta-learning step of the Mapping Network (paper §3.2.2, eq. (1)); functional, Lightning-free.

One outer step, given a meta-train batch, a meta-test batch and a reference batch ``T_ref``:

1. Inner loop: ``K`` plain SGD steps on functional copies of the parameters,
   ``θ_k = θ_{k-1} - α ∇ L_train(θ_{k-1})``, where ``L = λcls·BCE + λmse·MSE`` on the meta-train batch.
2. Selection: after every inner step the accuracy and the loss on ``T_ref`` are measured (no grad);
   the step with the highest accuracy is kept (paper §3.2.2). Accuracy on a few dozen samples moves
   in coarse steps, so ties are broken by the lower ``T_ref`` loss, and a remaining tie by the
   earliest step (the smallest departure from ``θ``). Only steps 1..K are candidates: the paper
   selects among gradient steps.
3. Meta-train term: ``L(θ_sel)`` on the meta-train batch.
4. Meta-test term: ``L(θ_sel)`` on the meta-test batch concatenated with a meta-train batch, shuffled.
5. Outer loss = meta-train term + meta-test term (eq. (1)); it carries a graph back to ``θ``.

Second order (default): inner gradients are taken with ``create_graph=True``, so the outer gradient
is the full MAML gradient ``∂L_outer/∂θ = Π_k (I - α H_k)ᵀ · ∇L_outer(θ_sel)`` (Hessian-vector
products through every inner update up to the selected one).

First order (``first_order=True``, FOMAML): inner gradients are computed without a graph and
detached, so ``θ_sel = θ - α Σ g_k`` with the ``g_k`` treated as constants; the outer gradient is
``∇L_outer`` evaluated at ``θ_sel`` and applied to ``θ`` (the Jacobian ``∂θ_sel/∂θ`` is the identity).

BatchNorm: inner steps, the meta-train term and the meta-test term run in the module's current
mode (train mode during fitting → batch statistics) on a scratch clone of the buffers, so they
never touch the real running statistics. ``T_ref`` is scored in eval mode with the real running
statistics (as at inference; eval mode only reads them), so its accuracy is what the deployed
network would get and it changes no statistics. ``running_stats="theta"`` (default) then advances the real running statistics once
per outer step with a no-grad train-mode forward of ``stats_batch`` under the outer parameters θ
— the parameters inference uses; ``"theta_sel"`` lets the meta-test forward at θ_sel advance them
instead; ``"none"`` leaves them alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Batch = Mapping[str, Any]
#: whose BatchNorm running statistics a meta step advances (see the module docstring)
RunningStats = Literal["theta", "theta_sel", "none"]
RUNNING_STATS = get_args(RunningStats)
# loss_fn(outputs, batch) -> loss tensor, or (loss, {name: component}) for logging
LossFn = Callable[[Any, Batch], Any]
AccuracyFn = Callable[[Any, Batch], float]


# --------------------------------------------------------------------------------------------- losses
@dataclass
class MappingLoss:
    """``λcls·BCE(logit, label) + λmse·MSE(mapped, target)`` for Mapping Network outputs.

    ``outputs`` is ``(logit (B,), mapped (B,3,S,S))``; ``batch[target_key]`` is the stage-1 MAE
    reconstruction of the input resized to S×S (same normalised space as ``mapped``).
    Returns ``(loss, {"cls": ..., "mse": ...})``.
    """

    lambda_cls: float = 1.0
    lambda_mse: float = 1.0
    target_key: str = "map_target"
    label_key: str = "label"

    def __call__(self, outputs: tuple[Tensor, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logit, mapped = outputs
        if self.target_key not in batch:
            raise KeyError(
                f"metalearning.py MappingLoss: batch has no {self.target_key!r}; put the MAE reconstruction "
                f"(B,3,{mapped.shape[-2]},{mapped.shape[-1]}) there before the meta step"
            )
        label = batch[self.label_key].to(logit.dtype)
        cls = F.binary_cross_entropy_with_logits(logit, label)
        mse = F.mse_loss(mapped, batch[self.target_key].to(mapped.dtype))
        return self.lambda_cls * cls + self.lambda_mse * mse, {"cls": cls, "mse": mse}


def binary_accuracy(outputs: Any, batch: Batch, label_key: str = "label") -> float:
    """Accuracy of a logit output: ``(B,)`` → ``logit > 0``; ``(B, C)`` → argmax. Tuples: first item."""
    logit = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    pred = logit.argmax(dim=1) if logit.ndim == 2 else (logit > 0).long()
    return (pred == batch[label_key].to(pred.device)).float().mean().item()


# --------------------------------------------------------------------------------------------- batches
def concat_batches(a: Batch, b: Batch) -> dict[str, Any]:
    """Concatenate two batch dicts along the batch dimension (tensors: ``cat``, lists: ``+``)."""
    if a.keys() != b.keys():
        raise KeyError(f"metalearning.py concat_batches: key mismatch {sorted(a.keys())} vs {sorted(b.keys())}")
    out: dict[str, Any] = {}
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, Tensor):
            out[k] = torch.cat([va, vb], dim=0)
        elif isinstance(va, (list, tuple)):
            out[k] = list(va) + list(vb)
        else:
            raise TypeError(f"metalearning.py concat_batches: cannot concatenate key {k!r} of type {type(va)}")
    return out


def batch_size(batch: Batch, input_key: str = "image") -> int:
    """Number of samples in a batch dict."""
    return int(batch[input_key].shape[0])


def select_batch(batch: Batch, index: Tensor | Sequence[int]) -> dict[str, Any]:
    """The samples ``index`` (in that order) of every per-sample entry of a batch dict."""
    idx = torch.as_tensor(index, dtype=torch.long)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, (list, tuple)):
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out


def shuffle_batch(batch: Batch, generator: torch.Generator | None = None, input_key: str = "image") -> dict[str, Any]:
    """Apply one random permutation to every per-sample entry of a batch dict."""
    return select_batch(batch, torch.randperm(batch_size(batch, input_key), generator=generator))


# --------------------------------------------------------------------------------------------- meta step
@dataclass
class MetaStepResult:
    """Outcome of one outer meta-learning step.

    Attributes:
        loss: outer loss (meta-train term + meta-test term), with graph to the original parameters.
        meta_train_loss: ``L(θ_sel)`` on the meta-train batch.
        meta_test_loss: ``L(θ_sel)`` on the shuffled meta-test ∪ meta-train batch.
        selected_step: number of inner updates in the selected parameters (1..K).
        ref_accuracies: accuracy on ``T_ref`` after each inner step (length K).
        ref_losses: loss on ``T_ref`` after each inner step (length K, floats; breaks accuracy ties).
        inner_losses: meta-train loss before each inner update (length K, floats).
        meta_train_parts / meta_test_parts: the loss components returned by ``loss_fn`` (detached).
        selected_params: the selected fast parameters (graph attached).
        param_distance: ``‖θ_sel − θ‖₂`` over the trained parameters (how far the inner loop went).
    """

    loss: Tensor
    meta_train_loss: Tensor
    meta_test_loss: Tensor
    selected_step: int
    ref_accuracies: list[float]
    ref_losses: list[float]
    inner_losses: list[float]
    meta_train_parts: dict[str, Tensor] = field(default_factory=dict)
    meta_test_parts: dict[str, Tensor] = field(default_factory=dict)
    selected_params: dict[str, Tensor] = field(default_factory=dict)
    param_distance: float = 0.0

    def log_dict(self, prefix: str = "meta/") -> dict[str, float]:
        """Flat float dict for a logger."""
        out = {
            f"{prefix}loss": float(self.loss.detach()),
            f"{prefix}train_loss": float(self.meta_train_loss.detach()),
            f"{prefix}test_loss": float(self.meta_test_loss.detach()),
            f"{prefix}selected_step": float(self.selected_step),
            f"{prefix}ref_acc": self.ref_accuracies[self.selected_step - 1],
            f"{prefix}ref_loss": self.ref_losses[self.selected_step - 1],
            f"{prefix}param_distance": self.param_distance,
        }
        out.update({f"{prefix}ref_acc_step{k + 1}": a for k, a in enumerate(self.ref_accuracies)})
        out.update({f"{prefix}train_{k}": float(v) for k, v in self.meta_train_parts.items()})
        out.update({f"{prefix}test_{k}": float(v) for k, v in self.meta_test_parts.items()})
        return out


def _split_loss(value: Tensor | tuple[Tensor, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    """``loss_fn``'s result as ``(loss, detached parts)``."""
    if isinstance(value, tuple):
        loss, parts = value
        return loss, {k: v.detach() for k, v in parts.items()}
    return value, {}


def _clone_buffers(buffers: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in buffers.items()}


def meta_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    meta_train_batch: Batch,
    meta_test_batch: Batch,
    ref_batch: Batch,
    loss_fn: LossFn,
    *,
    inner_steps: int = 3,
    inner_lr: float = 0.01,
    first_order: bool = False,
    mix_batch: Batch | None = None,
    accuracy_fn: AccuracyFn = binary_accuracy,
    input_key: str = "image",
    running_stats: RunningStats = "theta",
    stats_batch: Batch | None = None,
    generator: torch.Generator | None = None,
) -> MetaStepResult:
    """One outer meta-learning step (see the module docstring for the exact algorithm).

    Args:
        model: the network; it is only used as a stateless function through ``functional_call``.
        params: ``dict(model.named_parameters())`` (the outer parameters θ, requires_grad).
        buffers: ``dict(model.named_buffers())`` (the real buffers; see ``running_stats``).
        meta_train_batch / meta_test_batch / ref_batch: batch dicts; ``model(batch[input_key])``.
            ``ref_batch`` (T_ref) should hold samples of its own (see
            :func:`deepfakemae.modules.mapping.meta_split`).
        loss_fn: ``loss_fn(outputs, batch) -> loss`` or ``(loss, parts)``, e.g. :class:`MappingLoss`;
            also scores ``T_ref`` to break accuracy ties.
        inner_steps: K ≥ 1 inner SGD steps.
        inner_lr: inner SGD learning rate α.
        first_order: FOMAML (inner gradients detached) instead of second-order MAML.
        mix_batch: meta-train-domain batch concatenated with the meta-test batch for the meta-test
            term (paper: "another batch in the Meta-train domain"); defaults to ``meta_train_batch``.
        accuracy_fn: ``accuracy_fn(outputs, ref_batch) -> float``; higher is better.
        running_stats: whose BatchNorm running statistics advance, once per outer step:
            ``"theta"`` (a no-grad forward of ``stats_batch`` at θ), ``"theta_sel"`` (the
            meta-test forward at θ_sel) or ``"none"``.
        stats_batch: the samples of the ``"theta"`` forward; default meta-train ∪ meta-test.
        generator: RNG for the meta-test shuffle.
    """
    if inner_steps < 1:
        raise ValueError(f"metalearning.py meta_step: inner_steps must be >= 1, got {inner_steps}")
    if running_stats not in RUNNING_STATS:
        raise ValueError(f"metalearning.py meta_step: running_stats must be one of "
                         f"{RUNNING_STATS}, got {running_stats!r}")
    names = [n for n, p in params.items() if p.requires_grad]
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    scratch = _clone_buffers(buffers)

    def call(p: Mapping[str, Tensor], bufs: Mapping[str, Tensor], batch: Batch) -> Any:
        return functional_call(model, ({**p, **frozen}, bufs), (batch[input_key],), strict=False)

    fast: dict[str, Tensor] = {n: params[n] for n in names}
    candidates: list[dict[str, Tensor]] = []
    ref_acc: list[float] = []
    ref_loss: list[float] = []
    inner_losses: list[float] = []
    for _ in range(inner_steps):
        loss, _parts = _split_loss(loss_fn(call(fast, scratch, meta_train_batch), meta_train_batch))
        inner_losses.append(float(loss.detach()))
        grads = torch.autograd.grad(
            loss, [fast[n] for n in names], create_graph=not first_order, allow_unused=True
        )
        new_fast = {}
        for n, g in zip(names, grads, strict=True):
            if g is None:  # parameter not used by the loss: unchanged
                new_fast[n] = fast[n]
            else:
                new_fast[n] = fast[n] - inner_lr * (g.detach() if first_order else g)
        fast = new_fast
        candidates.append(fast)
        with torch.no_grad(), _eval_mode(model):  # the real running statistics (read only)
            ref_out = call(fast, buffers, ref_batch)
            ref_acc.append(float(accuracy_fn(ref_out, ref_batch)))
            ref_loss.append(float(_split_loss(loss_fn(ref_out, ref_batch))[0]))

    # highest accuracy; ties → lowest T_ref loss, then the earliest step
    best = max(range(inner_steps), key=lambda i: (ref_acc[i], -ref_loss[i], -i))
    selected = candidates[best]

    train_loss, train_parts = _split_loss(loss_fn(call(selected, scratch, meta_train_batch), meta_train_batch))
    mixed = shuffle_batch(
        concat_batches(meta_test_batch, mix_batch if mix_batch is not None else meta_train_batch),
        generator=generator,
        input_key=input_key,
    )
    test_bufs = dict(buffers) if running_stats == "theta_sel" else scratch
    test_loss, test_parts = _split_loss(loss_fn(call(selected, test_bufs, mixed), mixed))
    if running_stats == "theta":
        seen = stats_batch if stats_batch is not None else concat_batches(meta_train_batch,
                                                                          meta_test_batch)
        with torch.no_grad():
            call({n: params[n].detach() for n in names}, dict(buffers), seen)
    with torch.no_grad():
        distance = torch.sqrt(sum(((selected[n] - params[n]).float() ** 2).sum() for n in names))

    return MetaStepResult(
        loss=train_loss + test_loss,
        meta_train_loss=train_loss,
        meta_test_loss=test_loss,
        selected_step=best + 1,
        ref_accuracies=ref_acc,
        ref_losses=ref_loss,
        inner_losses=inner_losses,
        meta_train_parts=train_parts,
        meta_test_parts=test_parts,
        selected_params=selected,
        param_distance=float(distance),
    )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------- splits
def _as_rng(rng: random.Random | np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(63))
    return np.random.default_rng(rng)


def split_domains(
    domains: Sequence[Any], rng: random.Random | np.random.Generator | int | None, n_test: int = 1
) -> tuple[list[Any], list[Any]]:
    """Split fake domains at random into (meta-train domains, meta-test domains).

    Cross-dataset protocol: fake faces of the meta-train and meta-test sets come from different
    manipulation methods. Order inside each list follows ``domains``.
    """
    domains = list(domains)
    if len(set(domains)) != len(domains):
        raise ValueError(f"metalearning.py split_domains: duplicate domains in {domains}")
    if not 1 <= n_test < len(domains):
        raise ValueError(
            f"metalearning.py split_domains: need 1 <= n_test < len(domains); got n_test={n_test} for "
            f"{len(domains)} domains (single-method training: use split_indices instead)"
        )
    test_idx = set(_as_rng(rng).choice(len(domains), size=n_test, replace=False).tolist())
    train = [d for i, d in enumerate(domains) if i not in test_idx]
    test = [d for i, d in enumerate(domains) if i in test_idx]
    return train, test


def split_indices(
    n: int, rng: random.Random | np.random.Generator | int | None, ratio: float = 0.8
) -> tuple[list[int], list[int]]:
    """Random split of ``range(n)`` into (meta-train, meta-test) index lists, ``ratio`` : 1-ratio.

    Used by the single-method (cross-manipulation) protocol, paper: 8:2. Both parts are non-empty
    for ``n >= 2``; each list is sorted.
    """
    if n < 2:
        raise ValueError(f"metalearning.py split_indices: need at least 2 samples, got {n}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"metalearning.py split_indices: ratio must be in (0, 1), got {ratio}")
    n_train = min(max(int(round(n * ratio)), 1), n - 1)
    perm = _as_rng(rng).permutation(n)
    return sorted(perm[:n_train].tolist()), sorted(perm[n_train:].tolist())
