"""Auto-Switch's KNN router, the switch bank's rebuilt weights, and task-vector checks."""

import pytest
import torch

from sparsa.errors import SparsaError
from sparsa.formats.sign_mask import SignMask
from sparsa.formats.task_vector import CompressedTaskVector
from sparsa.merge.bank import SwitchBank
from sparsa.merge.config import RouterConfig, TSwitchConfig
from sparsa.merge.router import CentroidRouter, KNNRouter, MetricKNNRouter
from sparsa.merge.task_vector import apply_task_vector, task_vector
from sparsa.merge.methods.tswitch import compress_task_vector


def clusters(tasks=3, per=20, d=5, seed=0):
    """Well-separated Gaussian clusters, one per task: centres 10 apart, unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(tasks, d) * 10
    x = centres.repeat_interleave(per, 0) + torch.randn(tasks * per, d, generator=g)
    return x, torch.arange(tasks).repeat_interleave(per)


def test_knn_router_separable_features_returns_right_task():
    x, y = clusters()
    router = KNNRouter(x, y, tasks=3, k=10)
    test, truth = clusters(seed=1)
    assert torch.equal(router.route(test), truth)
    shares = router.shares(test)
    torch.testing.assert_close(shares.sum(1), torch.ones(60))
    assert bool((shares.max(1).values == 1).all())


def test_knn_router_shares_count_neighbour_votes():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    router = KNNRouter(x, torch.tensor([0, 0, 1, 1]), tasks=2, k=3)
    torch.testing.assert_close(router.shares(torch.tensor([[0.5]])), torch.tensor([[2 / 3, 1 / 3]]))


def test_knn_router_bad_labels_raise():
    with pytest.raises(SparsaError, match=r"labels must lie in \[0, 2\)"):
        KNNRouter(torch.zeros(3, 2), torch.tensor([0, 1, 2]), tasks=2)


def test_router_config_bad_k_raises():
    with pytest.raises(SparsaError, match="k=0: must be at least 1"):
        RouterConfig(k=0)


def test_knn_router_batch_weights_are_mean_shares():
    x, y = clusters()
    router = KNNRouter(x, y, tasks=3, k=10)
    test, _ = clusters(seed=1)
    torch.testing.assert_close(router.batch_weights(test[:25]), router.shares(test[:25]).mean(0))


def test_centroid_router_picks_nearest_task_mean_of_the_batch():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    router = CentroidRouter(x, torch.tensor([0, 0, 1, 1]), tasks=2)
    torch.testing.assert_close(router.centroids, torch.tensor([[1.0, 0.0], [11.0, 10.0]]))
    # single samples split between the tasks, their mean lies nearer task 1
    batch = torch.tensor([[4.0, 2.0], [9.0, 9.0], [10.0, 9.0]])
    assert router.route(batch).tolist() == [0, 1, 1]
    torch.testing.assert_close(router.batch_weights(batch), torch.tensor([0.0, 1.0]))


def test_centroid_router_separates_noisy_domain_single_neighbours_miss():
    """Images from 5 prototypes, clean and with clipped noise (as the digits' noise domain): a noisy
    sample's nearest neighbours are clean copies of its prototype, but the noisy batch's mean lies
    nearer the noisy centroid (clipping lifts the empty pixels)."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(5, 64, generator=g) < 0.3).float()
    content = lambda n: protos[torch.randint(5, (n,), generator=g)]  # noqa: E731
    noisy = lambda x: (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(0, 1)  # noqa: E731
    x, y = torch.cat([content(100), noisy(content(100))]), torch.tensor([0] * 100 + [1] * 100)
    knn, centroid = KNNRouter(x, y, tasks=2, k=10), CentroidRouter(x, y, tasks=2)
    test = noisy(content(32))
    assert float(knn.batch_weights(test)[1]) < 0.5
    torch.testing.assert_close(centroid.batch_weights(test), torch.tensor([0.0, 1.0]))


def test_centroid_router_task_without_samples_raises():
    with pytest.raises(SparsaError, match="task 1 has no query samples"):
        CentroidRouter(torch.zeros(2, 3), torch.tensor([0, 0]), tasks=2)


def state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g), "s": torch.tensor(1.0 + seed)}


def test_switch_bank_task_equals_base_plus_decompressed_vector():
    base, ft = state(0), {"a": state(1), "b": state(2)}
    ctvs = {t: compress_task_vector(task_vector(base, s), TSwitchConfig()) for t, s in ft.items()}
    bank = SwitchBank(base, ctvs)
    for t in ft:
        expect = apply_task_vector(base, ctvs[t].decompress())
        for name, value in bank.task(t).items():
            torch.testing.assert_close(value, expect[name])
    mixed = bank.weights({"a": 0.25, "b": 0.75})
    expect_w = base["w"] + 0.25 * ctvs["a"].decompress()["w"] + 0.75 * ctvs["b"].decompress()["w"]
    torch.testing.assert_close(mixed["w"], expect_w)
    torch.testing.assert_close(bank.weights({})["w"], base["w"])


def test_switch_bank_unknown_task_raises():
    base = state(0)
    bank = SwitchBank(base, {"a": compress_task_vector(task_vector(base, state(1)))})
    with pytest.raises(SparsaError, match="unknown task 'z'"):
        bank.weights({"z": 1.0})


def test_task_vector_checks_names_shapes_and_nan():
    base = state(0)
    with pytest.raises(SparsaError, match="tensor 'b' of the base model is missing"):
        task_vector(base, {"w": base["w"], "s": base["s"]})
    with pytest.raises(SparsaError, match=r"tensor 'x' is not in the base model"):
        task_vector(base, {**base, "x": torch.zeros(1)})
    with pytest.raises(SparsaError, match=r"tensor 'w' has shape \[4, 6\], the base \[6, 4\]"):
        task_vector(base, {**base, "w": torch.zeros(4, 6)})
    bad = {**base, "b": base["b"].clone()}
    bad["b"][1] = float("nan")
    with pytest.raises(SparsaError, match="tensor 'b' has a non-finite task-vector entry"):
        task_vector(base, bad)


def test_knn_router_vote_puts_all_weight_on_the_largest_mean_share():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    router = KNNRouter(x, torch.tensor([0, 0, 1, 1]), tasks=2, k=3, batch_mode="vote")
    batch = torch.tensor([[0.5], [9.0], [9.5]])  # shares [2/3, 1/3], [1/3, 2/3], [1/3, 2/3]
    torch.testing.assert_close(router.batch_weights(batch), torch.tensor([0.0, 1.0]))
    with pytest.raises(SparsaError, match="batch_mode 'max' is not one of mean, vote"):
        KNNRouter(x, torch.tensor([0, 0, 1, 1]), tasks=2, batch_mode="max")


def test_metric_knn_router_learns_the_informative_direction():
    """Task identity lives in one feature of 20; the other 19 are large noise. Plain KNN routes
    near chance; NCA's rank-1 metric finds the informative feature."""
    g = torch.Generator().manual_seed(0)

    def sample(n):
        y = torch.arange(2).repeat(n // 2)
        x = 5 * torch.randn(n, 20, generator=g)
        x[:, 7] = 3.0 * y + 0.3 * torch.randn(n, generator=g)
        return x, y

    x, y = sample(200)
    test, truth = sample(400)
    plain = KNNRouter(x, y, tasks=2, k=5)
    metric = MetricKNNRouter(x, y, tasks=2, k=5, rank=1, steps=300)
    assert (plain.route(test) == truth).float().mean() < 0.75
    assert (metric.route(test) == truth).float().mean() > 0.97
    assert metric.L.shape == (1, 20) and metric.L[0].abs().argmax() == 7
    assert metric.nbytes == 200 * 1 * 4 + 200 * 8 + 4 * (20 + 20 + 20)


def test_metric_knn_router_trains_under_inference_mode():
    x, y = clusters()
    with torch.inference_mode():
        router = MetricKNNRouter(x, y, tasks=3, k=5, rank=2, steps=50)
        assert torch.equal(router.route(clusters(seed=1)[0]), clusters(seed=1)[1])


def test_bank_rebuilds_coded_magnitudes():
    base = {"w": torch.zeros(2, 3), "b": torch.ones(3)}
    w = SignMask.from_ternary(torch.tensor([[1, 0, -1], [0, 1, 1]]), [0.5, 2.0], codes=torch.tensor([1, 0, 0, 1]))
    b = SignMask.from_ternary(torch.tensor([0, -1, 0]), 0.25)
    bank = SwitchBank(base, {"t": CompressedTaskVector({"w": w, "b": b}, {})})
    out = bank.weights({"t": 0.5})
    torch.testing.assert_close(out["w"], torch.tensor([[1.0, 0.0, -0.25], [0.0, 0.25, 1.0]]))
    torch.testing.assert_close(out["b"], torch.tensor([1.0, 0.875, 1.0]))
