"""Random smooth fields and irregular shapes: the drawing primitives of the synthetic BraTS generator.

Every function takes the ``numpy.random.Generator`` it draws from, so a case stays a function of its seed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import fft as sp_fft


def smooth_field(rng: np.random.Generator, shape: Sequence[int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with correlation length about ``scale`` voxels (white noise low-passed
    with a Gaussian of sigma ``scale / 2`` in the Fourier domain; periodic, which is harmless here)."""
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    freqs = [sp_fft.fftfreq(s) for s in shape[:-1]] + [sp_fft.rfftfreq(shape[-1])]
    k2 = sum(f.reshape([-1 if i == a else 1 for i in range(3)]).astype(np.float32) ** 2
             for a, f in enumerate(freqs))
    sigma = scale / 2
    field = sp_fft.irfftn(sp_fft.rfftn(noise) * np.exp(-2 * np.pi ** 2 * sigma ** 2 * k2), s=tuple(shape))
    field = field - field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def voxel_coordinates(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The x, y, z voxel indices as three broadcastable float32 arrays (``ogrid``-like)."""
    return tuple(np.arange(s, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
                 for a, s in enumerate(shape))


def ellipsoid_distance(coords, centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised ellipsoid distance (1 on the surface) of every voxel."""
    d = [c - m for c, m in zip(coords, centre)]
    if rotation is not None:
        d = [rotation[i, 0] * d[0] + rotation[i, 1] * d[1] + rotation[i, 2] * d[2] for i in range(3)]
    return np.sqrt(sum((di / r) ** 2 for di, r in zip(d, radii)))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3 x 3 orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def blob(rng, coords, shape, centre, radius, irregularity=0.25) -> np.ndarray:
    """Irregular blob: a randomly rotated, anisotropic ellipsoid whose surface is perturbed by a smooth field."""
    radii = radius * rng.uniform(0.75, 1.25, 3)
    dist = ellipsoid_distance(coords, centre, radii, random_rotation(rng))
    noise = smooth_field(rng, shape, max(1.5, radius / 1.5))
    return dist + irregularity * noise < 1.0
