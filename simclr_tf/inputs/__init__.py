"""Inputs: dataset sources, augmentations and tf.data pipelines."""
