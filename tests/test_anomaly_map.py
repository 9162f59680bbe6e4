"""The seed API, each method against an independent naive reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from padim.features.embedding import to_patch_layout
from padim.maps.anomaly_map import AnomalyMapGenerator, gaussian_blur, mahalanobis


def naive_distance(embedding, mean_dp, inv_cov):
    """Per-patch NumPy loop in float64: sqrt((x - mu)^T S^-1 (x - mu)), mean in anomalib's (D, P) layout."""
    e = embedding.double().numpy()
    m = mean_dp.double().numpy()
    s = inv_cov.double().numpy()
    n, d, h, w = e.shape
    out = np.zeros((n, 1, h, w))
    for b in range(n):
        for i in range(h):
            for j in range(w):
                p = i * w + j
                delta = e[b, :, i, j] - m[:, p]
                out[b, 0, i, j] = np.sqrt(max(delta @ s[p] @ delta, 0.0))
    return out


def naive_bilinear(x, size):
    """Half-pixel-centre bilinear resize (align_corners=False), written out per output pixel."""
    n, c, h, w = x.shape
    oh, ow = size
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        sy = max((i + 0.5) * h / oh - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for j in range(ow):
            sx = max((j + 0.5) * w / ow - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            out[:, :, i, j] = (1 - fy) * ((1 - fx) * x[:, :, y0, x0] + fx * x[:, :, y0, x1]) + fy * (
                (1 - fx) * x[:, :, y1, x0] + fx * x[:, :, y1, x1]
            )
    return out


def dense_blur(x, sigma):
    """Dense 2-D convolution with the outer-product kernel, reflect padding (anomalib's GaussianBlur2d)."""
    k = 2 * int(4 * sigma + 0.5) + 1
    t = np.arange(k) - k // 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    kernel = torch.from_numpy(np.outer(g, g))[None, None]
    padded = F.pad(x.double(), (k // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel).numpy()


def random_stats(p, d, generator):
    a = torch.randn(p, d, d, generator=generator, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    return torch.linalg.inv(cov)


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    n, d, h, w = 2, 6, 5, 7
    embedding = torch.randn(n, d, h, w, generator=g, dtype=torch.float64)
    mean = torch.randn(d, h * w, generator=g, dtype=torch.float64)
    return embedding, mean, random_stats(h * w, d, g)


def test_compute_distance_matches_naive_loop(case):
    embedding, mean, inv_cov = case
    got = AnomalyMapGenerator.compute_distance(embedding, [mean, inv_cov])
    assert got.shape == (2, 1, 5, 7)
    np.testing.assert_allclose(got.numpy(), naive_distance(embedding, mean, inv_cov), rtol=1e-5)


def test_compute_distance_float32(case):
    embedding, mean, inv_cov = case
    got = AnomalyMapGenerator.compute_distance(embedding.float(), [mean.float(), inv_cov.float()])
    np.testing.assert_allclose(got.numpy(), naive_distance(embedding, mean, inv_cov), rtol=1e-4)


def test_distance_at_the_mean_is_zero_not_nan():
    mean = torch.randn(3, 4)
    d = mahalanobis(mean[:, None, :].clone(), mean, torch.eye(4).repeat(3, 1, 1))
    assert d.shape == (3, 1) and torch.isfinite(d).all() and d.abs().max() < 1e-3


def test_patch_first_mahalanobis_matches_naive_loop(case):
    embedding, mean, inv_cov = case
    got = mahalanobis(to_patch_layout(embedding), mean.T, torch.linalg.cholesky(inv_cov))  # (P, N)
    expected = naive_distance(embedding, mean, inv_cov)[:, 0].reshape(2, -1).T
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_compute_distance_rejects_mismatched_shapes(case):
    embedding, mean, inv_cov = case
    with pytest.raises(ValueError, match="inv_covariance"):
        AnomalyMapGenerator.compute_distance(embedding, [mean, inv_cov[:-1]])


def test_up_sample_matches_naive_bilinear():
    x = torch.randn(2, 1, 5, 7, dtype=torch.float64)
    gen = AnomalyMapGenerator(image_size=(13, 9))
    np.testing.assert_allclose(gen.up_sample(x).numpy(), naive_bilinear(x.numpy(), (13, 9)), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("sigma", [1, 2.5, 4])
def test_smooth_matches_dense_conv(sigma):
    x = torch.rand(2, 1, 40, 37, dtype=torch.float64)
    gen = AnomalyMapGenerator(image_size=(40, 37), sigma=sigma)
    np.testing.assert_allclose(gen.smooth_anomaly_map(x).numpy(), dense_blur(x, sigma), rtol=1e-5, atol=1e-12)


def test_blur_keeps_a_constant_map_constant():
    assert torch.allclose(gaussian_blur(torch.full((1, 1, 40, 40), 3.0), 4), torch.full((1, 1, 40, 40), 3.0))


def test_blur_rejects_maps_smaller_than_kernel():
    with pytest.raises(ValueError, match="sigma=4"):
        gaussian_blur(torch.zeros(1, 1, 10, 10), 4)


def test_compute_anomaly_map_is_the_three_steps(case):
    embedding, mean, inv_cov = case
    gen = AnomalyMapGenerator(image_size=[24, 30], sigma=2)
    expected = dense_blur(torch.from_numpy(naive_bilinear(naive_distance(embedding, mean, inv_cov), (24, 30))), 2)
    got = gen(embedding=embedding, mean=mean, inv_covariance=inv_cov)
    assert got.shape == (2, 1, 24, 30)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(gen.compute_anomaly_map(embedding, mean, inv_cov).numpy(), expected, rtol=1e-5)


class ListConfigLike:
    """A sequence that is not a tuple, as omegaconf's ListConfig."""

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


@pytest.mark.parametrize("size", [(32, 48), [32, 48], ListConfigLike([32, 48])])
def test_image_size_is_stored_as_tuple(size):
    gen = AnomalyMapGenerator(size)
    assert gen.image_size == (32, 48) and isinstance(gen.image_size, tuple)
    assert gen.sigma == 4


@pytest.mark.parametrize("missing", ["embedding", "mean", "inv_covariance"])
def test_forward_names_the_missing_key(case, missing):
    embedding, mean, inv_cov = case
    kwargs = dict(embedding=embedding, mean=mean, inv_covariance=inv_cov)
    del kwargs[missing]
    with pytest.raises(ValueError, match=missing):
        AnomalyMapGenerator((16, 16))(**kwargs)


def test_is_an_nn_module_with_static_compute_distance():
    assert isinstance(AnomalyMapGenerator((8, 8)), torch.nn.Module)
    assert isinstance(AnomalyMapGenerator.__dict__["compute_distance"], staticmethod)


def test_fused_map_equals_upsample_then_smooth_in_float32():
    g = torch.Generator().manual_seed(3)
    distance = torch.rand(3, 1, 16, 12, generator=g) * 50
    gen = AnomalyMapGenerator(image_size=(64, 48), sigma=4)
    a_h, a_w = gen._resize_blur_matrices((16, 12), torch.float32, distance.device)
    fused = a_h @ distance @ a_w.T
    steps = gen.smooth_anomaly_map(gen.up_sample(distance))
    assert (fused - steps).abs().max() <= 1e-5 * steps.abs().max()


def test_compute_distance_accepts_a_channels_last_view(case):
    embedding, mean, inv_cov = case
    view = embedding.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not view.is_contiguous()
    np.testing.assert_allclose(
        AnomalyMapGenerator.compute_distance(view, [mean, inv_cov]).numpy(),
        naive_distance(embedding, mean, inv_cov),
        rtol=1e-5,
    )
