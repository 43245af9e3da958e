"""traiNNer-redux's AdanScheduleFree: Adan's moments (gradient, gradient difference, squared Nesterov gradient) with a
schedule-free average, as redux defines it (no maintained library ships this variant; the math below is redux's).

Per step t (per param group), with g the gradient (scaled by the global clip factor when max_grad_norm > 0) and
g_prev the previous one (g itself at t = 1):
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) (g - g_prev);   n = b3 n + (1 - b3) (g + b2 (g - g_prev))^2
    u = (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t)) + eps)
    c = w_t / sum(w),  w_t = t^r * lr_max^weight_lr_power,  lr_max the largest lr * min(1, t / warmup_steps) so far
    y = lerp(y, z, c) * (1 - lr * weight_decay) - lr (1 - c) u;   z = z - lr u
The parameters hold y while training; eval() moves them to x = y + (1 - 1/b1)(z - y), train() back, as redux does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.optimizer import Optimizer, ParamsT


class AdanScheduleFree(Optimizer):
    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        warmup_steps: int = 10000,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("max_grad_norm", max_grad_norm)):
            if value < 0:
                raise ValueError(f"{name} {value} is negative")
        if len(betas) != 3 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas {betas} must be three numbers in [0, 1)")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "warmup_steps": warmup_steps,
            "r": r,
            "weight_lr_power": weight_lr_power,
            "weight_sum": 0.0,
            "lr_max": -1.0,
            "train_mode": True,  # redux's starts in training mode
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def eval(self) -> None:
        self._switch(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        self._switch(to_train=True)

    def _switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = group["betas"][0]
            weight = 1 - beta1 if to_train else 1 - 1 / beta1
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    p.lerp_(z.to(p.device), weight)
            group["train_mode"] = to_train

    def _clip_factor(self) -> float:
        """redux's global gradient clip: max_grad_norm / (norm of all gradients + eps), at most 1."""
        max_norm = self.defaults["max_grad_norm"]
        if max_norm <= 0:
            return 1.0
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else 0.0
        return min(float(max_norm / (norm + self.param_groups[-1]["eps"])), 1.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # pyright: ignore[reportIncompatibleMethodOverride]
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError("AdanScheduleFree stepped in eval mode: call optimizer.train() after evaluating")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_factor()
        for group in self.param_groups:
            self._step_group(group, clip)
        return loss

    def _step_group(self, group: dict, clip: float) -> None:
        beta1, beta2, beta3 = group["betas"]
        t = group["step"] = group.get("step", 0) + 1
        lr, eps = group["lr"], group["eps"]
        warmup = group["warmup_steps"]
        group["lr_max"] = max(lr * (t / warmup if warmup > 0 and t < warmup else 1.0), group["lr_max"])
        weight = t ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] += weight
        c = weight / group["weight_sum"] if group["weight_sum"] else 0.0
        m_scale, v_scale = 1 / (1 - beta1**t), beta2 / (1 - beta2**t)
        n_scale = math.sqrt(1 - beta3**t)
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad * clip
            state = self.state[p]
            if not state:
                state.update(
                    exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p),
                    exp_avg_diff=torch.zeros_like(p),
                    z=p.clone(memory_format=torch.preserve_format),
                )
            if t == 1 or "previous_grad" not in state:
                state["previous_grad"] = grad.clone()
            diff = grad - state["previous_grad"]
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_diff"].lerp_(diff, 1 - beta2)
            nesterov = grad + beta2 * diff
            state["exp_avg_sq"].mul_(beta3).addcmul_(nesterov, nesterov, value=1 - beta3)
            denom = state["exp_avg_sq"].sqrt().div_(n_scale).add_(eps)
            update = (state["exp_avg"] * m_scale + state["exp_avg_diff"] * v_scale).div_(denom)
            p.lerp_(state["z"], c).mul_(1 - lr * group["weight_decay"]).add_(update, alpha=-lr * (1 - c))
            state["z"].add_(update, alpha=-lr)
            state["previous_grad"].copy_(grad)
