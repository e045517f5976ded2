# Wrappers for the encoder kernels (include/blocksparse/bsk_nn.h), included
# from _kernels.pyx so that one extension holds all the C glue.
