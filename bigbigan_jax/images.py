"""Image conversions, and grids a person can look at: samples G(z) and reconstructions x over
G(E(x))."""

import io

import numpy as np
from PIL import Image

from bigbigan_jax import paths


def to_float(images):
  """uint8 images -> float32 in [-1, 1] (NumPy, or JAX on the device: the same arithmetic)."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats (N, H, W, C) -> uint8 RGB (N, H, W, 3)."""
  images = np.asarray(images, np.float32)
  images = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def grid(images, columns: int, pad: int = 2) -> np.ndarray:
  """Tiles N images into rows of `columns` with a `pad`-pixel white border: (H', W', 3) uint8."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  rows = -(-n // columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return out


def reconstruction_grid(real, reconstructed, columns: int = 8) -> np.ndarray:
  """Rows of real images, each followed by a row of their reconstructions G(E(x))."""
  real, reconstructed = np.asarray(real), np.asarray(reconstructed)
  rows = []
  for start in range(0, len(real), columns):
    rows += [real[start:start + columns], reconstructed[start:start + columns]]
  return grid(np.concatenate(rows), columns)


def save_png(array: np.ndarray, path, scale: int = 1):
  """Writes a uint8 grid as a PNG (a local or cloud path), optionally enlarged (nearest
  neighbour) for tiny images."""
  image = Image.fromarray(array)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  paths.write_bytes(path, buffer.getvalue())
