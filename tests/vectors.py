"""Comparing embedding vectors of the same text at the precision of the dtype that computed them.

The same text embedded alone and among other inputs is padded to other lengths and may go
through other kernels: in float32 the vectors agree to ~1e-7, in bfloat16 to its 8-bit mantissa
(measured on MiniLM: up to 2e-3 per component, each vector at cosine >= 0.99992 of float32's).
"""

from __future__ import annotations

import numpy as np

# per-component agreement, and the least cosine between two computations of one text
ATOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 5e-3}
MIN_COSINE = {"float32": 0.999999, "float16": 0.9995, "bfloat16": 0.9995}


def assert_same_vectors(got, want, dtype: str) -> None:
    """``got`` and ``want`` (one vector or rows of them) are the same text's vectors in ``dtype``."""
    a, b = np.atleast_2d(np.asarray(got, dtype=np.float64)), np.atleast_2d(np.asarray(want, dtype=np.float64))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.allclose(a, b, atol=ATOL[dtype]), np.abs(a - b).max()
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= MIN_COSINE[dtype], cosine.min()
