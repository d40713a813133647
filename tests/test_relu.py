"""The ReLU after each residual addition: NaN in, NaN out, whatever the NaN's
sign, so that the NaN guard (training/hooks.py) sees a step that went wrong."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf.config import EncoderConfig
from simclr_tf.devices import precision
from simclr_tf.network import resnet

# bfloat16 bit patterns of a quiet NaN: positive, and negative (what
# inf - inf, 0 * inf and sqrt(-1) give on x86 CPUs).
NANS = {'positive': 0x7fc0, 'negative': 0xffc0}


def _with_nan(values, bits, dtype):
  """`values` as `dtype`, one pixel's channels set to the NaN of `bits`."""
  raw = tf.bitcast(tf.cast(values, tf.bfloat16), tf.uint16).numpy().copy()
  raw[0, 2, 3, :] = bits
  return tf.cast(tf.bitcast(tf.constant(raw), tf.bfloat16), dtype)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('sign', sorted(NANS))
@pytest.mark.parametrize('training', [False, True])
def test_a_nan_of_either_sign_comes_out_of_a_residual_block(
    dtype, sign, training, rng):
  with precision.dtype_policy(dtype):
    block = resnet.BasicBlock(EncoderConfig(resnet_depth=18,
                                            cifar_stem=True), 8, 1, False)
  inputs = _with_nan(rng.normal(size=(2, 6, 6, 8)), NANS[sign], dtype)
  outputs = tf.cast(block(inputs, training=training), tf.float32).numpy()
  assert np.isnan(outputs[0, 2, 3]).all()
  if training:  # Through the batch's statistics, to every output.
    assert np.isnan(outputs).all()
  else:  # The other image's outputs are ReLU's.
    assert not np.isnan(outputs[1]).any() and (outputs[1] >= 0).all()
