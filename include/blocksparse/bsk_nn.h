/*
 * Kernels for the BERT encoder (blocksparse.nn): fused residual + LayerNorm,
 * attention.  C11, no Python headers; same status conventions as bsk.h.
 */
#ifndef BLOCKSPARSE_BSK_NN_H
#define BLOCKSPARSE_BSK_NN_H

#include "blocksparse/bsk.h"

#endif /* BLOCKSPARSE_BSK_NN_H */
