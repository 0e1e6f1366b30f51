"""Input pipelines: Fashion-MNIST IDX files (offline) and TFDS named datasets."""
