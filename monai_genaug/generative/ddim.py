# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""DDIM arithmetic shared by the sampler, the inversion and the t -> t' jump.

One transition formula serves them all (Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502,
eq. 12): from ``x_t`` and a noise estimate, move to any noise level ``t'`` (lower for denoising, higher for
inversion)::

    x0  = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)
    x_t' = sqrt(a_t') * x0 + sqrt(1 - a_t' - sigma^2) * eps + sigma * z,
    sigma = eta * sqrt((1 - a_t') / (1 - a_t) * (1 - a_t / a_t'))

With ``eta = 1`` and consecutive timesteps this is exactly DDPM ancestral sampling with the "fixed_small"
posterior variance (Ho et al., arXiv:2006.11239), so one loop serves DDPM and DDIM. Timestep ``-1`` stands for
the clean end of the chain (``a = 1``, or the scheduler's ``final_alpha_cumprod``).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "CLEAN",
    "PREDICTION_TYPES",
    "alpha_bar",
    "timestep_for_alpha_bar",
    "prediction_type_of",
    "timestep_path",
    "to_epsilon_and_x0",
    "ddim_transition",
]

#: pseudo-timestep of the clean end of the chain
CLEAN = -1
#: the network parameterisations the core converts between (MONAI's ``DDPMPredictionType`` values)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type_of(scheduler: Any) -> str:
    """The prediction type of a scheduler as a plain string (MONAI stores a str enum; absent means ``"epsilon"``).

    The one place the package normalises it: the sampler, the inversion, the training targets and the trackers all
    read it through this function.

    Raises:
        ValueError: a prediction type the core cannot convert (the message lists the supported ones).
    """
    value = getattr(scheduler, "prediction_type", None)
    value = "epsilon" if value is None else str(getattr(value, "value", value))
    if value not in PREDICTION_TYPES:
        raise ValueError(
            f"scheduler.prediction_type '{value}' is not supported; use one of {', '.join(map(repr, PREDICTION_TYPES))}."
        )
    return value


def alpha_bar(scheduler: torch.nn.Module, timestep: int) -> float:
    """Cumulative alpha of ``scheduler`` at ``timestep`` as a Python float (``CLEAN`` gives the final value)."""
    if timestep < 0:
        final = getattr(scheduler, "final_alpha_cumprod", None)
        return 1.0 if final is None else float(final)
    if timestep >= scheduler.num_train_timesteps:
        raise ValueError(f"timestep {timestep} is outside the schedule [0, {scheduler.num_train_timesteps - 1}].")
    return float(scheduler.alphas_cumprod[timestep])


def timestep_for_alpha_bar(scheduler: torch.nn.Module, target: float) -> int:
    """The timestep in ``[1, T - 1]`` whose cumulative alpha is nearest to ``target``: a noise level that means the same
    on every schedule (TTGA's original code inverts to alpha-bar ~0.74; a raw index such as 300 is 0.74 on its own
    table but 0.41 on a scaled-linear one).

    Args:
        scheduler: any scheduler with ``alphas_cumprod`` and ``num_train_timesteps``.
        target: the wanted alpha-bar, in (0, 1).
    """
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"an alpha-bar noise level must be in (0, 1) (1 = clean, 0 = pure noise), got {target}.")
    bars = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)[1 : int(scheduler.num_train_timesteps)]
    return int(torch.argmin((bars - float(target)).abs()).item()) + 1


def timestep_path(
    num_train_timesteps: int,
    num_inference_steps: int,
    start_timestep: int | None = None,
    end_timestep: int = CLEAN,
) -> list[int]:
    """Descending timesteps ``[t_0, ..., t_K]`` of a sampling run; the UNet is called at every entry but the last.

    The ``num_inference_steps`` evaluation points are spread evenly from ``start_timestep`` (default ``T - 1``,
    "trailing" spacing: the first step really starts from pure noise) down to 0, and the path ends at
    ``end_timestep`` (default the clean end). Starting lower is partial denoising (SDEdit-style, TTGA).

    Args:
        num_train_timesteps: T of the training schedule.
        num_inference_steps: number of UNet evaluations.
        start_timestep: noise level of the input, default ``T - 1``.
        end_timestep: where the last step lands: ``CLEAN`` (-1) or a timestep below the last evaluation point.
    """
    start = num_train_timesteps - 1 if start_timestep is None else int(start_timestep)
    if not 0 <= start < num_train_timesteps:
        raise ValueError(f"start_timestep must be in [0, {num_train_timesteps - 1}], got {start_timestep}.")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
    steps = min(num_inference_steps, start + 1)
    points = torch.linspace(start, 0, steps).round().long().tolist() if steps > 1 else [start]
    path = sorted(set(points), reverse=True)
    if end_timestep >= path[-1]:
        raise ValueError(f"end_timestep {end_timestep} must be below the last evaluation point {path[-1]}.")
    return path + [int(end_timestep)]


def to_epsilon_and_x0(
    model_output: torch.Tensor, x_t: torch.Tensor, a_t: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a UNet output of any prediction type to (noise estimate, clean estimate) at noise level ``a_t``."""
    sa, sb = a_t**0.5, (1.0 - a_t) ** 0.5
    if prediction_type == "epsilon":
        return model_output, (x_t - sb * model_output) / sa
    if prediction_type == "v_prediction":
        return sa * model_output + sb * x_t, sa * x_t - sb * model_output
    if prediction_type == "sample":
        return (x_t - sa * model_output) / max(sb, 1e-12), model_output
    raise ValueError(f"unknown prediction_type '{prediction_type}'; use 'epsilon', 'v_prediction' or 'sample'.")


def ddim_transition(
    x0: torch.Tensor,
    eps: torch.Tensor,
    a_t: float,
    a_next: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move to noise level ``a_next`` given the clean and noise estimates made at level ``a_t``.

    ``a_next > a_t`` denoises (``eta`` adds fresh noise, DDPM at ``eta = 1``), ``a_next < a_t`` inverts
    (``eta`` must be 0). ``noise`` is the fresh Gaussian draw, required when ``eta > 0``.
    """
    sigma = 0.0
    if eta > 0 and a_next > a_t:
        sigma = eta * (((1.0 - a_next) / (1.0 - a_t)) * (1.0 - a_t / a_next)) ** 0.5
    elif eta > 0:
        raise ValueError("stochastic steps (eta > 0) only go towards less noise; use eta = 0 for inversion.")
    x = a_next**0.5 * x0 + max(1.0 - a_next - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor.")
        x = x + sigma * noise
    return x

