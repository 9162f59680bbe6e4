"""Streaming statistics against NumPy's covariance, and exact merges."""

import numpy as np
import pytest
import torch

from padim.stats.gaussian import (
    GaussianStats,
    pack_triangular,
    precision_cholesky_from_stats,
    precision_from_cholesky,
    triangle_dim,
    unpack_triangular,
)


def numpy_cov(x, eps):
    """x (N, P, D) -> per-patch np.cov (unbiased) + eps I."""
    return np.stack([np.cov(x[:, p, :], rowvar=False) + eps * np.eye(x.shape[2]) for p in range(x.shape[1])])


@pytest.fixture
def samples():
    g = torch.Generator().manual_seed(1)
    # An offset far from zero: a sum-of-squares formula would lose digits here.
    return (torch.randn(37, 5, 4, generator=g, dtype=torch.float64) * 3 + 1000).float().double()


def stream(x, sizes):
    stats = GaussianStats.empty(x.shape[1], x.shape[2])
    start = 0
    for size in sizes:
        stats.update(x[start : start + size].transpose(0, 1))  # (P, N, D)
        start += size
    return stats


def test_streamed_equals_numpy(samples):
    stats = stream(samples, [10, 1, 20, 6])
    np.testing.assert_allclose(stats.mean.numpy(), samples.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(0.01).numpy(), numpy_cov(samples.numpy(), 0.01), rtol=1e-6)


def test_streamed_equals_one_shot_equals_merged_halves(samples):
    one = stream(samples, [37])
    streamed = stream(samples, [3, 5, 7, 11, 11])
    merged = stream(samples[:15], [15]).merge(stream(samples[15:], [8, 14]))
    for other in (streamed, merged):
        assert other.count == one.count == 37
        np.testing.assert_allclose(other.mean.numpy(), one.mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(other.m2.numpy(), one.m2.numpy(), rtol=1e-6)


def test_merge_with_empty_is_identity(samples):
    one = stream(samples, [37])
    merged = one.merge(GaussianStats.empty(5, 4))
    np.testing.assert_allclose(merged.m2.numpy(), one.m2.numpy(), rtol=1e-12)


def test_precision_factor_gives_the_inverse_covariance(samples):
    stats = stream(samples, [37])
    factor = precision_cholesky_from_stats(stats, eps=0.01, chunk_bytes=2 * 4 * 4 * 8)  # two patches a chunk
    assert factor.dtype == torch.float32 and factor.shape == (5, 4, 4)
    assert torch.equal(factor, factor.triu())  # upper triangular
    expected = np.linalg.inv(numpy_cov(samples.numpy(), 0.01))
    np.testing.assert_allclose(precision_from_cholesky(factor).numpy(), expected, rtol=1e-4)


def test_covariance_needs_two_samples():
    stats = GaussianStats.empty(2, 3).update(torch.zeros(2, 1, 3))  # (P, N, D): one image
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance()


def test_update_rejects_wrong_shape():
    with pytest.raises(ValueError, match="P, D"):
        GaussianStats.empty(2, 3).update(torch.zeros(4, 3, 3))


def test_float32_scatter_is_numerically_safe(samples):
    """Centred updates in float32 keep ~6 digits even with a large offset (no sum-of-squares cancellation)."""
    exact = stream(samples, [37])
    stats = GaussianStats.empty(5, 4, dtype=torch.float32)
    for start in range(0, 37, 6):
        stats.update(samples[start : start + 6].float().transpose(0, 1))
    np.testing.assert_allclose(stats.mean.numpy(), exact.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance(0.01).numpy(), exact.covariance(0.01).numpy(), rtol=1e-5)


def test_update_in_patch_chunks_equals_whole(samples, monkeypatch):
    whole = stream(samples, [20, 17])
    monkeypatch.setattr("padim.stats.gaussian.UPDATE_CHUNK_BYTES", 1)  # one patch per chunk
    chunked = stream(samples, [20, 17])
    np.testing.assert_allclose(chunked.m2.numpy(), whole.m2.numpy(), rtol=1e-12)


def test_packing_keeps_the_upper_triangles_row_by_row_and_unpacks_them():
    factor = torch.randn(7, 5, 5, generator=torch.Generator().manual_seed(0)).triu()
    packed = pack_triangular(factor)
    expected = [[float(m[i, j]) for i in range(5) for j in range(i, 5)] for m in factor]  # naive row order
    assert packed.shape == (7, 15) and packed.tolist() == expected
    assert torch.equal(unpack_triangular(packed, chunk_bytes=2 * 25 * 4), factor)  # two patches a chunk
    assert unpack_triangular(packed.half(), torch.float16).dtype == torch.float16
    assert triangle_dim(15) == 5
    with pytest.raises(ValueError, match="not the length"):
        triangle_dim(14)


def test_packed_factors_are_the_float32_factors_rounded_to_float16(samples):
    stats = stream(samples, [37])
    full = precision_cholesky_from_stats(stats, eps=0.01)
    packed = precision_cholesky_from_stats(stats, eps=0.01, chunk_bytes=2 * 4 * 4 * 8, packed=True)
    assert packed.dtype == torch.float16 and packed.shape == (5, 10)
    assert torch.equal(packed, pack_triangular(full).half())
