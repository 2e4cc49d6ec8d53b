"""Evaluates a training run's checkpoint with the evaluators of bigbigan_jax/evaluators/.

  python -m bigbigan_jax.evaluate --workdir=runs/mnist [--metrics=linear_probe,knn,recon]
      (default: the run's enabled config.evals)
      [--step=K] [--data_dir=DIR] [--train_examples=N] [--random_init | --raw_pixels]
      [--[no]encoder_standing_stats] [--noema]
  python -m bigbigan_jax.evaluate --workdir=runs/mnist --metrics=fid,is
      --inception_weights=PATH [--num_fid_samples=N]   (pytorch-fid's weights file; default:
      the run's evals.fid.inception_weights)

`--metrics` names entries of the run's `config.evals` (linear_probe, knn, recon, recon_labels,
pairing, fid, is, bigan_nn1; see bigbigan_jax/evaluators/__init__.py for what each reports).
Prints one JSON object as its last line and appends it to WORKDIR/eval.jsonl. Accuracies are
fractions; `*_test` is the evaluation split (`data.eval_split`).

FID/IS use the FID Inception-v3 (inception.py) with pytorch-fid's weights file, never downloaded;
the evaluation split's Inception statistics are cached in
WORKDIR/fid_reference_<dataset>_<split>_<resolution>.npz.

Baselines for the "does it learn" check: `--random_init` (same architecture, fresh weights) and
`--raw_pixels` (the probes on pixels: linear_probe_pixels_*, nn1_test, knn*). A GAN-mode run (no
encoder) has no encoder metrics; they are listed under 'skipped'.
"""

import json

from absl import flags
import jax

from bigbigan_jax import cli
from bigbigan_jax import config_lib
from bigbigan_jax import evaluators
from bigbigan_jax import extract
from bigbigan_jax import inception as inception_lib
from bigbigan_jax import inference
from bigbigan_jax import models
from bigbigan_jax import paths
from bigbigan_jax import sharding
from bigbigan_jax.errors import UserError

ENCODER_STATS_BATCHES = 16  # train batches for E's --encoder_standing_stats, unless configured

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a program: main.py has its own --workdir)."""
  flags.DEFINE_string("workdir", None, "Training run directory (or its checkpoints/ directory).")
  flags.DEFINE_string("metrics", None,
                      "Comma-separated names of the run's config.evals (default: those enabled "
                      "in the run's config).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_string("dataset", None, "TFDS name or folder:/path (default: the run's dataset).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's).")
  flags.DEFINE_integer("batch_size", 256, "Images per device call.")
  flags.DEFINE_integer("train_examples", None,
                       "Use only the first N train examples for the probes and the k-NN bank.")
  flags.DEFINE_bool("ema", True, "Use the EMA weights of G and E (--noema: the raw weights).")
  flags.DEFINE_bool("random_init", False, "Baseline: the same architecture, freshly initialised.")
  flags.DEFINE_bool("raw_pixels", False, "Baseline: the probes on raw pixels instead of features.")
  flags.DEFINE_bool("encoder_standing_stats", None,
                    "Re-estimate E's batch-norm statistics as the average moments of the first "
                    "batches of the train split before evaluating (the run's "
                    f"eval.encoder_stats_batches, else {ENCODER_STATS_BATCHES}); with "
                    "--random_init this is the random twin normalised as in training (at init "
                    "its BN statistics are mean 0, variance 1: the identity). Default: as the "
                    "run evaluated itself in training (eval.encoder_stats_batches).")
  flags.DEFINE_string("inception_weights", None,
                      f"fid,is: the FID Inception-v3 weights, pytorch-fid's "
                      f"{inception_lib.WEIGHTS_FILE} (or an .npz of it); never downloaded. "
                      "Default: the path the run's config names (evals.fid.inception_weights).")
  flags.DEFINE_integer("num_fid_samples", None,
                       "fid,is: generated images (default: the run's evals.fid.num_samples).")
  flags.DEFINE_bool("standing_stats", None,
                    "fid,is: recompute G's BN statistics on fresh latents first "
                    "(default: the run's evals.fid.standing_stats).")


def inception_weights(config, generation, flag_value):
  """The Inception weights for the FID/IS evaluators `generation`: the flag's path, else the one
  the run's config names (`evals.<name>.inception_weights`)."""
  if flag_value:
    return flag_value
  named = [config.evals[n].get("inception_weights") for n in generation]
  named = [w for w in named if w]
  if generation and not named:
    raise evaluators.fid.missing_weights_error(generation)
  return named[0] if named else None


def _check_flags(config, names):
  """One-line errors for flag combinations that cannot work, before anything is restored;
  returns (FID/IS evaluator names, their Inception weights' path)."""
  if FLAGS.random_init and FLAGS.raw_pixels:
    raise UserError("--random_init and --raw_pixels are two different baselines: pass one")
  generation = config_lib.inception_names(config.evals, names)
  if FLAGS.inception_weights and not generation:
    raise UserError("--inception_weights is only used by --metrics=fid,is: add them to "
                    "--metrics or drop the flag")
  if generation and FLAGS.raw_pixels:
    raise UserError("--raw_pixels has no generator: drop fid,is from --metrics")
  return generation, inception_weights(config, generation, FLAGS.inception_weights)


def main(argv):
  del argv
  cli.quiet_logging()
  if not FLAGS.workdir:
    raise UserError("--workdir is required: the training run to evaluate")
  config = inference.load_config(FLAGS.workdir, FLAGS.step)
  names = (evaluators.enabled(config) if FLAGS.metrics is None
           else evaluators.parse_names(FLAGS.metrics, config))
  generation, weights_path = _check_flags(config, names)
  # The weights first: a wrong file fails before the checkpoint is restored.
  inception = inception_lib.load(weights_path) if weights_path else None
  mesh = sharding.local_mesh()
  if FLAGS.random_init or FLAGS.raw_pixels:
    model = inference.BigBiGAN(config, models.build(config), mesh, batch_size=FLAGS.batch_size)
    if FLAGS.random_init:
      model = model.with_random_init()
    weights = "random_init" if FLAGS.random_init else "raw_pixels"
  else:
    config, networks, state, _ = inference.restore(FLAGS.workdir, FLAGS.step, mesh)
    model = inference.BigBiGAN(config, networks, mesh, batch_size=FLAGS.batch_size).with_state(
        state, use_ema=FLAGS.ema)
    weights = "ema" if FLAGS.ema else "raw"
  data = extract.data_config_for(config, FLAGS.dataset, FLAGS.data_dir)
  configured = int(config.eval.encoder_stats_batches or 0)
  if FLAGS.encoder_standing_stats and (not model.has_features or FLAGS.raw_pixels):
    raise UserError("--encoder_standing_stats needs an encoder: drop it (GAN mode or "
                    "--raw_pixels)")
  if FLAGS.encoder_standing_stats is None:
    stats_batches = 0 if FLAGS.raw_pixels else configured
  else:
    stats_batches = (configured or ENCODER_STATS_BATCHES) if FLAGS.encoder_standing_stats else 0
  if stats_batches:
    weights += "+encoder_standing_stats"
  suite = evaluators.from_config(
      config, names, data_config=data, train_examples=FLAGS.train_examples, test_examples=None,
      encoder_stats_batches=stats_batches, progress=True, cache=False,
      reference_dir=inference.workdir_of(FLAGS.workdir), inception=inception,
      fid_options=dict(num_samples=FLAGS.num_fid_samples, standing_stats=FLAGS.standing_stats)
      if generation else None)
  result = suite.raw_pixels(model) if FLAGS.raw_pixels else suite(model)
  result = {"step": result.pop("step"), "weights": weights, "dataset": data.dataset,
            "train_examples": FLAGS.train_examples, **result}
  line = json.dumps(result)
  if jax.process_index() == 0:
    paths.append_jsonl(inference.workdir_of(FLAGS.workdir) / "eval.jsonl", [result])
  print(line, flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
