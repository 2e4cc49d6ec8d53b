"""Does D's joint score know which z goes with which x? (docs/design.md#evaluation)

Encoder pairs (x, E(x)) are D's "real" pairs, so a D that knows E's pairing scores them above
(x, E(x')), x' another test image (of the first `examples`); generator pairs are "fake", so one
that knows G's pairing scores (G(z), z) below (G(z), z'). pairing_encoder_test and
pairing_generator are the shares of pairs for which it does (0.5: no knowledge; ties count as
not knowing). Nothing without a joint score.
"""

import numpy as np

from bigbigan_jax.evaluators import common

SEED = 0  # the shuffles and the generated pairs' latents


def pairing_metrics(model, images) -> dict:
  """The two shares for `images` [N, S, S, C] of the test split."""
  n = len(images)
  shuffle = np.random.default_rng(SEED).permutation(n)
  joint = lambda x, z: model.discriminate(x, z)["score_xz"]
  z_hat = model.encode(images, seed=SEED)["z_sample"]
  matched = joint(images, z_hat)
  if matched is None:
    return {}
  z = model.sample_z(n, seed=SEED)
  fake = model.generate(z)
  return {"pairing_encoder_test": float(np.mean(matched > joint(images, z_hat[shuffle]))),
          "pairing_generator": float(np.mean(joint(fake, z) < joint(fake, z[shuffle])))}


class Pairing(common.Evaluator):
  needs_encoder = True

  def __init__(self, examples: int = 1000):
    super().__init__()
    self.examples = int(examples)

  def run(self, ctx):
    images = ctx.data.images(ctx.model, "test", limit=self.examples)["images"]
    return pairing_metrics(ctx.model, images)
