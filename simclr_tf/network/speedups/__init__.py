"""Faster ways to compute what a Keras or TensorFlow op computes.

Each module here replaces an op on the hardware where the replacement is
faster, and computes the same thing: its tests compare it with the op it
replaces. weight_gradients: bfloat16 weight gradients of small 3x3
convolutions as matmuls on CPUs; batch_norm: batch norm through the fused
oneDNN / cuDNN kernel, and global batch norm's moments in one all-reduce.
"""
