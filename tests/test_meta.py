"""Meta-learning step: step selection on T_ref, eq. (1), second- vs first-order gradients, BN stats."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from deepfakemae.metalearning import (
    MappingLoss,
    concat_batches,
    meta_step,
    shuffle_batch,
    split_domains,
    split_indices,
)


def _params_buffers(model: nn.Module) -> tuple[dict, dict]:
    return dict(model.named_parameters()), dict(model.named_buffers())


# ----------------------------------------------------------------------------- step selection
class _Line(nn.Module):
    """logit = w·x + b on 1-D inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x[:, 0] + self.b


def _batch(xs: list[float], labels: list[int]) -> dict:
    return {"image": torch.tensor(xs).unsqueeze(1), "label": torch.tensor(labels)}


def _push_bias_up(outputs: torch.Tensor, batch: dict) -> torch.Tensor:
    # on x = 0 inputs this is -b: every inner SGD step with lr 1 adds exactly 1 to b
    return -outputs.mean()


@pytest.mark.parametrize(
    "ref_x, ref_y, expected_acc, expected_step",
    [
        # b_k = k, decision "fake" iff x > -k
        ([-1.5, -2.5, -0.5], [1, 0, 1], [2 / 3, 1.0, 2 / 3, 2 / 3], 2),
        ([-2.5, -3.5], [1, 0], [0.5, 0.5, 1.0, 0.5], 3),
        # accuracy ties → lowest T_ref loss (-(x + b_k) falls with k): the last step
        ([-0.5], [1], [1.0, 1.0, 1.0, 1.0], 4),
    ],
)
def test_selects_step_with_best_ref_accuracy(ref_x, ref_y, expected_acc, expected_step) -> None:
    model = _Line()
    params, buffers = _params_buffers(model)
    train = _batch([0.0, 0.0], [1, 1])
    res = meta_step(
        model, params, buffers, train, _batch([0.0], [0]), _batch(ref_x, ref_y), _push_bias_up,
        inner_steps=4, inner_lr=1.0,
    )
    assert res.ref_accuracies == pytest.approx(expected_acc)
    assert res.selected_step == expected_step
    assert res.selected_params["b"].item() == pytest.approx(float(expected_step))
    assert res.inner_losses == pytest.approx([0.0, -1.0, -2.0, -3.0])
    # meta-train term uses the selected parameters: -b_sel
    assert res.meta_train_loss.item() == pytest.approx(-float(expected_step))


def _bias_up_then_ref_distance(outputs: torch.Tensor, batch: dict) -> torch.Tensor:
    # meta-train: -b as above; T_ref (has "center"): squared distance of the logits from it
    if "center" in batch:
        return ((outputs - batch["center"]) ** 2).mean()
    return -outputs.mean()


@pytest.mark.parametrize(
    "center, expected_losses, expected_step",
    [
        (3.5, [9.0, 4.0, 1.0, 0.0], 4),  # equal accuracy → the lowest T_ref loss wins
        (2.0, [2.25, 0.25, 0.25, 2.25], 2),  # equal accuracy and loss → the earliest step
    ],
)
def test_ref_accuracy_tie_is_broken_by_ref_loss(center, expected_losses, expected_step) -> None:
    model = _Line()
    params, buffers = _params_buffers(model)
    # logits on T_ref are b_k - 0.5 = k - 0.5 > 0: every step classifies T_ref perfectly
    ref = dict(_batch([-0.5, -0.5], [1, 1]), center=torch.full((2,), center))
    res = meta_step(model, params, buffers, _batch([0.0, 0.0], [1, 1]), _batch([0.0], [0]), ref,
                    _bias_up_then_ref_distance, inner_steps=4, inner_lr=1.0)
    assert res.ref_accuracies == pytest.approx([1.0] * 4)
    assert res.ref_losses == pytest.approx([(k - 0.5 - center) ** 2 for k in range(1, 5)])
    assert res.ref_losses == pytest.approx(expected_losses)
    assert res.selected_step == expected_step
    assert res.log_dict()["meta/ref_loss"] == pytest.approx(expected_losses[expected_step - 1])


# ----------------------------------------------------------------------------- eq. (1) and reference unroll
class _TinyMapper(nn.Module):
    """(B, 4) → (logit (B,), mapped (B, 2)): the Mapping Network's output contract in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 1)
        self.map = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.body(x))
        return self.fc(h).squeeze(1), self.map(h)


def _map_batch(g: torch.Generator, n: int, label: int) -> dict:
    return {
        "image": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "label": torch.full((n,), label),
        "map_target": torch.randn(n, 2, generator=g, dtype=torch.float64),
        "video_key": [f"v{label}_{i}" for i in range(n)],
    }


def _reference_unroll(model, train, test, ref, mix, loss_fn, k, lr, sel_perm):
    """Plain autograd MAML with the same selection rule, written independently of meta_step."""
    theta = dict(model.named_parameters())
    fast, cands, accs, ref_losses = theta, [], [], []
    for _ in range(k):
        loss, _ = loss_fn(functional_call(model, fast, (train["image"],)), train)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads, strict=True)}
        cands.append(fast)
        out = functional_call(model, fast, (ref["image"],))
        accs.append(((out[0] > 0).long() == ref["label"]).double().mean().item())
        ref_losses.append(loss_fn(out, ref)[0].item())
    best = max(range(k), key=lambda i: (accs[i], -ref_losses[i], -i))
    sel = cands[best]
    l_tr, _ = loss_fn(functional_call(model, sel, (train["image"],)), train)
    mixed = {key: torch.cat([test[key], mix[key]])[sel_perm] for key in ("image", "label", "map_target")}
    l_te, _ = loss_fn(functional_call(model, sel, (mixed["image"],)), mixed)
    return l_tr, l_te, best + 1


@pytest.mark.parametrize("first_order", [False, True])
def test_outer_loss_is_sum_of_terms_and_matches_reference(first_order: bool) -> None:
    torch.manual_seed(0)
    model = _TinyMapper().double()
    g = torch.Generator().manual_seed(1)
    train = concat_batches(_map_batch(g, 3, 0), _map_batch(g, 3, 1))
    test = concat_batches(_map_batch(g, 2, 0), _map_batch(g, 2, 1))
    ref = concat_batches(_map_batch(g, 4, 0), _map_batch(g, 4, 1))
    mix = concat_batches(_map_batch(g, 2, 0), _map_batch(g, 2, 1))  # meta-train domain, own samples
    loss_fn = MappingLoss(lambda_cls=1.0, lambda_mse=0.5)
    params, buffers = _params_buffers(model)
    res = meta_step(
        model, params, buffers, train, test, ref, loss_fn, inner_steps=3, inner_lr=0.5,
        first_order=first_order, mix_batch=mix, generator=torch.Generator().manual_seed(7),
    )
    torch.testing.assert_close(res.loss, res.meta_train_loss + res.meta_test_loss)
    assert set(res.meta_train_parts) == {"cls", "mse"} and set(res.meta_test_parts) == {"cls", "mse"}
    torch.testing.assert_close(
        res.meta_test_loss, loss_fn.lambda_cls * res.meta_test_parts["cls"] + 0.5 * res.meta_test_parts["mse"]
    )
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))
    l_tr, l_te, step = _reference_unroll(model, train, test, ref, mix, loss_fn, 3, 0.5, perm)
    assert res.selected_step == step
    torch.testing.assert_close(res.meta_train_loss, l_tr)
    torch.testing.assert_close(res.meta_test_loss, l_te)
    grads = torch.autograd.grad(res.loss, list(params.values()))
    ref_grads = torch.autograd.grad(l_tr + l_te, list(params.values()))
    for a, b in zip(grads, ref_grads, strict=True):
        if first_order:
            assert not torch.allclose(a, b)  # the reference is second order
        else:
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- analytic second / first order
class _Theta(nn.Module):
    """Outputs the parameter vector θ for every sample: a quadratic model with known Hessians."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)  # (B, d)


def _quadratic(out: torch.Tensor, batch: dict) -> torch.Tensor:
    # 0.5 · mean_i (θ - t_i)ᵀ A_i (θ - t_i)
    d = out - batch["target"]
    return 0.5 * torch.einsum("bi,bij,bj->b", d, batch["A"], d).mean()


def _closeness_to(a: torch.Tensor):
    return lambda out, batch: -float((out[0] - a).norm())


def test_second_order_gradient_matches_analytic_maml() -> None:
    d, alpha = 3, 0.1
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]], dtype=torch.float64)
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    c = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    theta0 = torch.tensor([0.3, 0.7, -0.4], dtype=torch.float64)
    n = 2
    train = {"image": torch.zeros(n, 1), "target": a.expand(n, d), "A": A.expand(n, d, d)}
    test = {"image": torch.zeros(n, 1), "target": c.expand(n, d), "A": torch.eye(d, dtype=torch.float64).expand(n, d, d)}

    # two inner steps: θ2 - a = (I - αA)²(θ - a); T_ref "accuracy" = closeness to a → step 2 selected
    M = torch.eye(d, dtype=torch.float64) - alpha * A
    theta2 = a + M @ M @ (theta0 - a)
    # outer = L_tr(θ2) + mean over (test ∪ train) = 1.5·L_tr(θ2) + 0.5·L_te(θ2)
    g_at_theta2 = 1.5 * A @ (theta2 - a) + 0.5 * (theta2 - c)
    expected_second = (M @ M).T @ g_at_theta2
    expected_first = g_at_theta2

    grads = {}
    for first_order in (False, True):
        model = _Theta(theta0)
        params, buffers = _params_buffers(model)
        res = meta_step(
            model, params, buffers, train, test, train, _quadratic, inner_steps=2, inner_lr=alpha,
            first_order=first_order, accuracy_fn=_closeness_to(a),
        )
        assert res.selected_step == 2
        torch.testing.assert_close(res.selected_params["theta"].detach(), theta2)
        res.loss.backward()
        grads[first_order] = model.theta.grad.clone()
    torch.testing.assert_close(grads[False], expected_second)
    torch.testing.assert_close(grads[True], expected_first)
    assert (grads[False] - grads[True]).abs().max() > 1e-2  # the Hessian terms are really there


# ----------------------------------------------------------------------------- BatchNorm running stats
class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.lin(x)))).squeeze(1)


def _bce(out: torch.Tensor, batch: dict) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out, batch["label"].float())


@pytest.mark.parametrize("mode", ["none", "theta_sel", "theta"])
def test_batchnorm_running_stats_advance_once_under_the_chosen_parameters(mode: str) -> None:
    torch.manual_seed(0)
    model = _BNNet().train()
    g = torch.Generator().manual_seed(3)

    def b(n: int) -> dict:
        return {"image": torch.randn(n, 4, generator=g) + 2.0, "label": torch.randint(0, 2, (n,), generator=g)}

    train, test, ref, whole = b(6), b(4), b(6), b(16)
    params, buffers = _params_buffers(model)
    before = {k: v.clone() for k, v in buffers.items()}
    res = meta_step(model, params, buffers, train, test, ref, _bce, inner_steps=3, inner_lr=0.1,
                    running_stats=mode, stats_batch=whole,
                    generator=torch.Generator().manual_seed(0))
    after = dict(model.named_buffers())
    assert model.training  # the eval-mode T_ref forward restores the mode
    if mode == "none":
        for k in before:
            torch.testing.assert_close(after[k], before[k])
        return
    assert after["bn.num_batches_tracked"].item() == 1
    if mode == "theta_sel":  # the meta-test forward (test ∪ train) at the selected params
        sel = {k: v.detach() for k, v in res.selected_params.items()}
        h = torch.cat([test["image"], train["image"]]) @ sel["lin.weight"].T + sel["lin.bias"]
    else:  # one forward of the whole batch at θ, the parameters inference uses
        h = whole["image"] @ params["lin.weight"].detach().T + params["lin.bias"].detach()
    m = model.bn.momentum
    torch.testing.assert_close(after["bn.running_mean"], (1 - m) * before["bn.running_mean"] + m * h.mean(0))
    torch.testing.assert_close(after["bn.running_var"], (1 - m) * before["bn.running_var"] + m * h.var(0, unbiased=True))
    res.loss.backward()
    assert model.lin.weight.grad is not None
    assert res.param_distance > 0


def test_ref_set_is_scored_in_eval_mode_and_changes_no_statistics() -> None:
    """T_ref accuracy is what inference (eval-mode BatchNorm) would get at each inner step."""
    torch.manual_seed(1)
    model = _BNNet().train()
    g = torch.Generator().manual_seed(4)
    data = {"image": torch.randn(12, 4, generator=g) * 3 + 5.0,  # far from the running stats
            "label": torch.randint(0, 2, (12,), generator=g)}
    ref = {"image": torch.randn(10, 4, generator=g) * 3 + 5.0,
           "label": torch.randint(0, 2, (10,), generator=g)}
    params, buffers = _params_buffers(model)
    before = {k: v.clone() for k, v in buffers.items()}
    res = meta_step(model, params, buffers, data, data, ref, _bce, inner_steps=3, inner_lr=0.5,
                    running_stats="none", generator=torch.Generator().manual_seed(0))
    for k in before:  # nothing advanced the real statistics, T_ref evaluation included
        torch.testing.assert_close(buffers[k], before[k])
    # replay the inner loop by hand; score T_ref in eval mode with the untouched statistics
    fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    eval_losses, train_losses = [], []
    for _ in range(3):
        scratch = {k: v.clone() for k, v in before.items()}
        out = functional_call(model, ({**fast}, scratch), (data["image"],))
        grads = torch.autograd.grad(_bce(out, data), list(fast.values()))
        fast = {k: (v - 0.5 * gr).detach().requires_grad_(True)
                for (k, v), gr in zip(fast.items(), grads, strict=True)}
        with torch.no_grad():
            model.eval()
            eval_losses.append(float(_bce(functional_call(model, (fast, before), (ref["image"],)), ref)))
            model.train()
            train_losses.append(float(_bce(functional_call(model, (fast, {k: v.clone() for k, v in before.items()}), (ref["image"],)), ref)))
    np.testing.assert_allclose(res.ref_losses, eval_losses, rtol=1e-4)
    assert max(abs(a - b) for a, b in zip(res.ref_losses, train_losses, strict=True)) > 1e-3


def test_mapping_network_meta_step_end_to_end() -> None:
    from deepfakemae.models.mapping_network import MappingNetwork

    torch.manual_seed(0)
    net = MappingNetwork(map_size=16).train()
    g = torch.Generator().manual_seed(0)

    def b(n: int) -> dict:
        return {
            "image": torch.randn(n, 3, 64, 64, generator=g),
            "label": torch.tensor([0, 1] * (n // 2)),
            "map_target": torch.randn(n, 3, 16, 16, generator=g),
        }

    params, buffers = _params_buffers(net)
    res = meta_step(net, params, buffers, b(2), b(2), b(2), MappingLoss(), inner_steps=2, inner_lr=0.01)
    res.loss.backward()
    assert 1 <= res.selected_step <= 2 and len(res.ref_accuracies) == 2
    assert torch.isfinite(res.loss)
    assert net.stem[0].weight.grad.abs().sum() > 0 and net.fc.weight.grad.abs().sum() > 0
    assert net.stem[1].num_batches_tracked.item() == 1
    logs = res.log_dict()
    assert {"meta/loss", "meta/selected_step", "meta/train_cls", "meta/test_mse"} <= set(logs)


# ----------------------------------------------------------------------------- batches and splits
def test_concat_and_shuffle_keep_samples_aligned() -> None:
    a = {"image": torch.arange(3.0).unsqueeze(1), "label": torch.tensor([0, 1, 0]), "video_key": ["a", "b", "c"]}
    b = {"image": torch.arange(3.0, 5.0).unsqueeze(1), "label": torch.tensor([1, 1]), "video_key": ["d", "e"]}
    cat = concat_batches(a, b)
    assert cat["video_key"] == ["a", "b", "c", "d", "e"]
    sh = shuffle_batch(cat, torch.Generator().manual_seed(0))
    lookup = {k: (float(x), int(y)) for k, x, y in zip(cat["video_key"], cat["image"][:, 0], cat["label"], strict=True)}
    for k, x, y in zip(sh["video_key"], sh["image"][:, 0], sh["label"], strict=True):
        assert lookup[k] == (float(x), int(y))
    assert sorted(sh["video_key"]) == cat["video_key"]
    with pytest.raises(KeyError):
        concat_batches(a, {"image": b["image"], "label": b["label"]})


def test_split_domains() -> None:
    domains = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    tr, te = split_domains(domains, 0, n_test=1)
    assert len(te) == 1 and len(tr) == 3 and set(tr) | set(te) == set(domains) and not set(tr) & set(te)
    assert split_domains(domains, 0) == (tr, te)  # reproducible from the seed
    seen = {tuple(split_domains(domains, np.random.default_rng(s))[1]) for s in range(40)}
    assert len(seen) == 4  # every domain gets its turn as meta-test
    tr2, te2 = split_domains(domains, random.Random(1), n_test=2)
    assert len(tr2) == 2 and len(te2) == 2
    with pytest.raises(ValueError, match="split_indices"):
        split_domains(["Deepfakes"], 0)


def test_split_indices() -> None:
    tr, te = split_indices(10, 0)
    assert len(tr) == 8 and len(te) == 2 and sorted(tr + te) == list(range(10))
    assert split_indices(10, 0) == (tr, te)
    tr, te = split_indices(2, 5, ratio=0.9)
    assert len(tr) == 1 and len(te) == 1
    with pytest.raises(ValueError):
        split_indices(1, 0)
