"""Input pipelines: Fashion-MNIST IDX files (offline), image folders and TFDS named datasets.

Modules, one job each:

* :mod:`~tofu_jax.data.sources`: opening sources (TFDS datasets, image folders), choosing the
  evaluation split, checking a source's classes and labels against the model;
* :mod:`~tofu_jax.data.idx`: the IDX file format of (Fashion-)MNIST;
* :mod:`~tofu_jax.data.transforms`: per-image and per-array transforms (ranges, normalisation,
  resampling, crops, augmentation, each model's recipe);
* :mod:`~tofu_jax.data.batching`: index order, sharding and the one :func:`batches` generator;
* :mod:`~tofu_jax.data.splits`: the open-data functions re-exported here.

Open data for a model (images ``float32 [N, S, S, C]`` preprocessed for it, labels ``int32 [N]``):

* :func:`load_split`: a seeded draw of a split, in memory;
* :func:`open_eval_set`: the evaluation set, in memory for IDX files, else streamed batch by batch;
* :func:`eval_split_name`: which split that is when none is named;
* :func:`read_image` / :func:`read_image_file`: one image of a split / one image file.
"""

from tofu_jax.data.batching import StreamedImages, batches
from tofu_jax.data.sources import IDX_DATASET, eval_split_name
from tofu_jax.data.splits import load_split, open_eval_set, read_image, read_image_file
from tofu_jax.errors import DataError

__all__ = [
    "IDX_DATASET",
    "DataError",
    "StreamedImages",
    "batches",
    "eval_split_name",
    "load_split",
    "open_eval_set",
    "read_image",
    "read_image_file",
]
