"""Training pruned models back to quality: distillation from the dense model.

The optional ``train`` extra (``pip install 'blocksparse[train]'``, PyTorch
2.13.0).  Importing this package does not import torch; :func:`distill`
does, and says which extra to install when it is missing.  Models it makes
are ordinary checkpoints: inference never needs torch.
"""
from ._distill import cubic_sparsity, distill, require_torch

__all__ = ["distill", "cubic_sparsity", "require_torch"]
