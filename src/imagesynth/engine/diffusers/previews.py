"""Preview pictures from the latents of a running denoising loop, made cheaply.

A preview is a latent-to-RGB projection, never a VAE decode: each image's latent pixels
(C channels at 1/8 of the size, or the patch grid) are projected onto their three principal
components, which are stretched to 0..255. That costs a C x C eigen-decomposition and one
small matrix product per image (well under a millisecond of GPU time at 1024x1024), and works
for every family and any latent channel count, demo weights included. The colours are not the
image's (no family's VAE is consulted), but shapes and composition are: what a preview is for.

torch is imported lazily, as everywhere in engine/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

# The pipeline's latents during the loop -> (B, C, h, w): families lay them out differently.
Unpack = Callable[[Any], Any]


def first_frame(latents: Any) -> Any:
    """Wan's video latents (B, C, T, h, w) -> frame 0; 4-D latents as they are."""
    return latents[:, :, 0] if latents.ndim == 5 else latents


def latent_previews(latents: Any, unpack: Unpack = first_frame) -> list[Image.Image]:
    """One RGB preview per image of the batch, at the latents' resolution."""
    import torch

    with torch.no_grad():
        grid = unpack(latents).float()
        b, c, h, w = grid.shape
        pixels = grid.permute(0, 2, 3, 1).reshape(b, h * w, c)
        pixels = pixels - pixels.mean(dim=1, keepdim=True)
        previews = []
        for one in pixels:
            projected = one @ _components(one)  # (h*w, 3)
            low = torch.quantile(projected, 0.02, dim=0)
            high = torch.quantile(projected, 0.98, dim=0)
            scaled = ((projected - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
            rgb = (scaled * 255).round().to(torch.uint8).reshape(h, w, 3).cpu().numpy()
            previews.append(Image.fromarray(rgb, "RGB"))
        return previews


def _components(pixels: Any) -> Any:
    """The three directions of largest variance of (N, C) centred pixels, as a (C, 3) matrix
    (fewer channels than three: padded with zero columns). Signs are chosen so that each
    component's largest coefficient is positive, which keeps colours steady between steps."""
    import torch

    c = pixels.shape[1]
    cov = (pixels.T @ pixels).cpu()  # C x C: solved on the CPU, where small problems are fast
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors[:, -3:].flip(1)
    signs = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    top = top * torch.where(signs == 0, torch.ones_like(signs), signs)
    if c < 3:
        top = torch.cat([top, torch.zeros(c, 3 - top.shape[1])], dim=1)
    return top.to(pixels.device, pixels.dtype)
