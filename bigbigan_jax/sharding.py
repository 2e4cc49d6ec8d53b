"""The device mesh, shardings, and moving arrays between hosts and devices.

Training is SPMD over a 1-D `('data',)` mesh of every device of every process: parameters and
optimizer state are replicated, batches are sharded along the mesh. Inference and evaluation may
use `local_mesh()`, the devices of this process alone.
"""

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes, in process order."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def local_mesh() -> Mesh:
  """A 1-D ('data',) mesh over this process's devices: inference needs no other host."""
  return Mesh(np.asarray(jax.local_devices()), ("data",))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rows(mesh) -> NamedSharding:
  """Sharding of a `[batch, ...]` array: the batch axis over 'data'."""
  return NamedSharding(mesh, P("data"))


def batch_sharding(mesh) -> NamedSharding:
  """Sharding of a `[d_steps, global_batch, ...]` image stack: the batch axis over 'data'."""
  return NamedSharding(mesh, P(None, "data"))


def is_multihost(mesh) -> bool:
  """Whether `mesh` spans devices of other processes."""
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def global_images(local_batches, mesh):
  """Stacks `d_steps` process-local batches and assembles the global, sharded array."""
  local = np.stack(local_batches)
  global_shape = (local.shape[0], local.shape[1] * jax.process_count()) + local.shape[2:]
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local, global_shape)


def to_device_rows(local_rows, mesh):
  """This process's rows of a global batch -> a global array sharded along 'data'."""
  local_rows = np.asarray(local_rows)
  if not is_multihost(mesh):
    return jax.device_put(local_rows, rows(mesh))
  shape = (local_rows.shape[0] * jax.process_count(),) + local_rows.shape[1:]
  return jax.make_array_from_process_local_data(rows(mesh), local_rows, shape)


def replicate(mesh, array):
  """A host value, identical on every process, as a replicated global array."""
  return jax.make_array_from_process_local_data(replicated(mesh), np.asarray(array))


def fetch(array) -> np.ndarray:
  """A replicated global array back on the host (works in multi-process runs)."""
  return np.asarray(array.addressable_data(0))


def gather_rows(local_rows, mesh) -> np.ndarray:
  """This process's rows of a global batch -> the whole global batch, on every process."""
  if not is_multihost(mesh):
    return np.asarray(local_rows)
  return np.asarray(multihost_utils.process_allgather(np.asarray(local_rows), tiled=True))
