"""Differentiable image augmentations for learned augmentation policies (DADA, Li et al. 2020).

Each operation maps a batch of model-input images ``x`` [N, C, H, W] (normalized, any scale) and a magnitude in
[0, 1] per image to augmented images, differentiably in both, so a policy's magnitudes get gradients. Geometric
operations warp through ``affine_grid``/``grid_sample`` (border padding: the background of glyphs and characters
continues past the edge); contrast and brightness are arithmetic; cutout is a square soft mask (a sigmoid edge, so
its size has a gradient) filled with the image's border colour; elastic warps by a Gaussian-smoothed random
displacement field (Simard et al. 2003).

The randomness of an operation (the direction of a rotation, where the cutout goes, the displacement field) is
drawn once per batch into :class:`Draws` from a generator, so a policy's sample is reproducible and a test can
fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

OPERATIONS = ("identity", "rotate", "shear", "translate", "scale", "contrast", "brightness", "cutout", "elastic")
# The strength of each operation at magnitude 1 (its unit in the comment).
MAXIMUM = {"rotate": 30.0,  # degrees
           "shear": 0.3,  # horizontal shear factor
           "translate": 0.2,  # fraction of the image side
           "scale": 0.3,  # relative zoom in or out
           "contrast": 0.8,  # relative change of the contrast
           "brightness": 0.3,  # fraction of the image's value range
           "cutout": 0.5,  # side of the square, as a fraction of the image side
           "elastic": 3.0}  # largest displacement in pixels
ELASTIC_SIGMA = 3.0  # pixels: the smoothing of the displacement field
CUTOUT_EDGE = 0.5  # pixels: the width of the soft mask's edge


@dataclass
class Draws:
    """The random parts of one batch's augmentations, one entry per image."""

    sign: torch.Tensor  # [N] +1 or -1: the direction of rotate, shear, scale, contrast, brightness
    direction: torch.Tensor  # [N] angle of a translation, radians
    centre: torch.Tensor  # [N, 2] cutout centre (x, y) in [-1, 1] image coordinates
    field: torch.Tensor  # [N, 2, H, W] smoothed displacement field, largest |value| 1 per image

    @classmethod
    def sample(cls, x: torch.Tensor, generator: torch.Generator | None = None) -> "Draws":
        """Drawn on the CPU from ``generator`` (same numbers on every device), then moved to ``x``'s device."""
        n, _, h, w = x.shape
        sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
        direction = torch.rand(n, generator=generator) * 2 * math.pi
        centre = torch.rand(n, 2, generator=generator) * 2 - 1
        noise = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
        draws = cls(sign, direction, centre, smooth_field(noise))
        return draws.to(x.device, x.dtype)

    def to(self, device, dtype) -> "Draws":
        return Draws(*(t.to(device=device, dtype=dtype) for t in (self.sign, self.direction, self.centre,
                                                                   self.field)))


def smooth_field(noise: torch.Tensor, sigma: float = ELASTIC_SIGMA) -> torch.Tensor:
    """Gaussian-smoothed noise [N, 2, H, W], scaled so each image's largest displacement is 1."""
    radius = max(1, int(round(2 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=noise.dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(noise.device)
    n, c, h, w = noise.shape
    flat = noise.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    field = flat.reshape(n, c, h, w)
    peak = field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    return field / peak


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _theta(a, b, tx, c, d, ty) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


def identity(x, magnitude, draws):
    return x


def rotate(x, magnitude, draws):
    angle = draws.sign * magnitude * math.radians(MAXIMUM["rotate"])
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    return _warp(x, _theta(cos, -sin, zero, sin, cos, zero))


def shear(x, magnitude, draws):
    k = draws.sign * magnitude * MAXIMUM["shear"]
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return _warp(x, _theta(one, k, zero, zero, one, zero))


def translate(x, magnitude, draws):
    # affine_grid's coordinates span 2 per image side.
    distance = 2 * magnitude * MAXIMUM["translate"] * torch.ones_like(draws.direction)
    one, zero = torch.ones_like(distance), torch.zeros_like(distance)
    return _warp(x, _theta(one, zero, distance * torch.cos(draws.direction), zero, one,
                           distance * torch.sin(draws.direction)))


def scale(x, magnitude, draws):
    inverse = 1.0 / (1.0 + draws.sign * magnitude * MAXIMUM["scale"])
    zero = torch.zeros_like(inverse)
    return _warp(x, _theta(inverse, zero, zero, zero, inverse, zero))


def contrast(x, magnitude, draws):
    factor = (1.0 + draws.sign * magnitude * MAXIMUM["contrast"]).view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def brightness(x, magnitude, draws):
    value_range = (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True)).detach()
    shift = (draws.sign * magnitude * MAXIMUM["brightness"]).view(-1, 1, 1, 1)
    return x + shift * value_range


def border_colour(x: torch.Tensor) -> torch.Tensor:
    """Each image's mean edge pixel per channel [N, C, 1, 1]: its background."""
    edges = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)
    return edges.mean(dim=-1, keepdim=True).unsqueeze(-1).detach()


def cutout(x, magnitude, draws):
    n, _, h, w = x.shape
    half = (magnitude * MAXIMUM["cutout"] * torch.ones(n, dtype=x.dtype, device=x.device)).view(n, 1, 1)
    ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, 1, w)
    edge = 2 * CUTOUT_EDGE / max(h, w)  # the soft edge, in [-1, 1] coordinates
    inside_x = torch.sigmoid((half - (xs - draws.centre[:, 0].view(n, 1, 1)).abs()) / edge)
    inside_y = torch.sigmoid((half - (ys - draws.centre[:, 1].view(n, 1, 1)).abs()) / edge)
    # Fades in over the first edge-width of size, so magnitude 0 leaves the image untouched.
    mask = (inside_x * inside_y * (half / edge).clamp(max=1)).unsqueeze(1)
    return x * (1 - mask) + border_colour(x) * mask


def elastic(x, magnitude, draws):
    n, _, h, w = x.shape
    identity_theta = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(identity_theta, list(x.shape), align_corners=False)
    pixels = (magnitude * MAXIMUM["elastic"] * torch.ones(n, dtype=x.dtype, device=x.device)).view(n, 1, 1, 1)
    to_grid = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
    displacement = draws.field.permute(0, 2, 3, 1) * pixels * to_grid
    return F.grid_sample(x, grid + displacement, mode="bilinear", padding_mode="border", align_corners=False)


FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, Draws], torch.Tensor]] = {
    "identity": identity, "rotate": rotate, "shear": shear, "translate": translate, "scale": scale,
    "contrast": contrast, "brightness": brightness, "cutout": cutout, "elastic": elastic}


def apply(name: str, x: torch.Tensor, magnitude: torch.Tensor, draws: Draws) -> torch.Tensor:
    """Operation ``name`` at ``magnitude`` (a scalar tensor or one per image, in [0, 1])."""
    magnitude = magnitude.to(x.dtype).expand(x.shape[0]) if magnitude.dim() == 0 else magnitude.to(x.dtype)
    return FUNCTIONS[name](x, magnitude, draws)
