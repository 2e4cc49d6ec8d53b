"""Optimizers of the three networks, their learning-rate schedules, and the EMA of G and E.

See docs/design.md#training: separate Adam for D, G and E (E's rate is eta times G's),
and an exponential moving average of G's and E's weights for evaluation.
"""

import jax
import jax.numpy as jnp
import optax


def learning_rate(config, base_lr):
  """`base_lr`, or with `optim.schedule='constant_then_exp_decay'` (BiGAN 2017) a schedule that is
  constant for the first `optim.decay_start` of `total_steps`, then decays exponentially to
  `optim.final_lr_mult * base_lr` at the last step."""
  o = config.optim
  if o.schedule == "constant":
    return base_lr
  begin = int(o.decay_start * config.total_steps)
  return optax.exponential_decay(base_lr, transition_steps=max(config.total_steps - begin, 1),
                                 decay_rate=o.final_lr_mult, transition_begin=begin)


def create_optimizers(config) -> dict:
  """Separate Adam for D, G and E (E's learning rate is eta times G's). `optim.weight_decay`
  adds an L2 penalty's gradient to every parameter's, as the BiGAN paper did."""
  o = config.optim

  def adam(lr):
    opt = optax.adam(learning_rate(config, lr), b1=o.b1, b2=o.b2, eps=o.eps)
    if o.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    return opt

  return {"generator": adam(o.g_lr), "discriminator": adam(o.d_lr),
          "encoder": adam(o.g_lr * o.e_lr_mult)}


def apply_updates(optimizers, state, name, grads):
  """One optimizer update of network `name` in place in `state` (whose dicts are fresh copies)."""
  updates, state["opt"][name] = optimizers[name].update(
      grads, state["opt"][name], state["params"][name])
  state["params"][name] = optax.apply_updates(state["params"][name], updates)


def update_ema(config, state, nets=None):
  """Advances the EMA of `nets` (default: every network in `state['ema']`). Before
  `ema.start_step` the EMA just tracks the weights; SN and BN state are not averaged."""
  nets = list(state["ema"]) if nets is None else nets
  decay = jnp.where(state["step"] >= config.ema.start_step, config.ema.decay, 0.0)
  ema = {k: jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                         state["ema"][k], state["params"][k]) for k in nets}
  return {**state, "ema": {**state["ema"], **ema}}
