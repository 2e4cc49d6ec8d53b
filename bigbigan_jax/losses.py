"""BigBiGAN and BiGAN objectives (docs/design.md#losses).

Scores are dicts `{'s_x', 's_z', 's_xz'}` of per-example arrays, `None` where a term does not
exist. "enc" pairs are (x, E(x)) with label +1; "gen" pairs are (G(z), z) with label -1.
"""

import jax
import jax.numpy as jnp

TERMS = ("s_x", "s_z", "s_xz")


def active_terms(enc_scores, loss_config):
  """The score terms that exist and are switched on in `loss_config`."""
  return [t for t in TERMS if loss_config[t] and enc_scores.get(t) is not None]


def _combine(per_term, loss_config):
  total = sum(per_term.values())
  if loss_config.reduction == "mean":  # the hub demo's average over the terms
    total = total / len(per_term)
  return total


def discriminator_loss(enc_scores, gen_scores, loss_config):
  """L_D. Hinge: E_enc[h(s)] + E_gen[h(-s)] per term, h(t) = max(0, 1 - t), each term clamped
  on its own. BCE (BiGAN 2017): softplus(-s_enc) + softplus(s_gen), i.e. sigmoid cross-entropy.

  Returns (loss, {'d_loss_<term>': ...}).
  """
  per_term = {}
  for t in active_terms(enc_scores, loss_config):
    if loss_config.form == "hinge":
      per_term[t] = (jnp.mean(jax.nn.relu(1.0 - enc_scores[t]))
                     + jnp.mean(jax.nn.relu(1.0 + gen_scores[t])))
    else:
      per_term[t] = (jnp.mean(jax.nn.softplus(-enc_scores[t]))
                     + jnp.mean(jax.nn.softplus(gen_scores[t])))
  return _combine(per_term, loss_config), {f"d_loss_{t}": v for t, v in per_term.items()}


def encoder_generator_loss(enc_scores, gen_scores, loss_config):
  """L_EG. Hinge form: E_enc[s] - E_gen[s] summed over terms (E and G push the scores of their
  pairs toward the other side). BCE form: the label-swapped ("inverse") objective of BiGAN,
  softplus(s_enc) + softplus(-s_gen).

  Returns (loss, {'eg_loss_<term>': ...}).
  """
  per_term = {}
  for t in active_terms(enc_scores, loss_config):
    if loss_config.form == "hinge":
      per_term[t] = jnp.mean(enc_scores[t]) - jnp.mean(gen_scores[t])
    else:
      per_term[t] = (jnp.mean(jax.nn.softplus(enc_scores[t]))
                     + jnp.mean(jax.nn.softplus(-gen_scores[t])))
  return _combine(per_term, loss_config), {f"eg_loss_{t}": v for t, v in per_term.items()}


def score_means(enc_scores, gen_scores):
  """Mean of each existing score on both pair types, for logging."""
  out = {}
  for t in TERMS:
    if enc_scores.get(t) is not None:
      out[f"{t}_enc"] = jnp.mean(enc_scores[t])
      out[f"{t}_gen"] = jnp.mean(gen_scores[t])
  return out
