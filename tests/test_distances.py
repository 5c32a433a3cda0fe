import pytest
import torch

from fsl.components import DISTANCES
from fsl.models.distances import cosine, dot, l2, logits, prototypes


def test_l2_is_the_squared_euclidean_distance_worked_by_hand():
    queries = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    protos = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    # (0,0)->(3,4): 9+16=25; (0,0)->(1,0): 1; (1,2)->(3,4): 4+4=8; (1,2)->(1,0): 0+4=4
    assert torch.allclose(l2(queries, protos), torch.tensor([[25.0, 1.0], [8.0, 4.0]]))


def test_cosine_is_one_minus_the_cosine_worked_by_hand():
    queries = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    protos = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    half = 1 - 1 / 2**0.5
    expected = torch.tensor([[0.0, 1.0, 2.0], [half, half, 1 + 1 / 2**0.5]])
    assert torch.allclose(cosine(queries, protos), expected, atol=1e-6)


def test_dot_is_the_negative_dot_product():
    queries = torch.tensor([[1.0, 2.0]])
    protos = torch.tensor([[3.0, 4.0], [-1.0, 0.5]])
    assert torch.allclose(dot(queries, protos), torch.tensor([[-11.0, 0.0]]))


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_logits_are_the_negative_distance_with_an_episode_dimension(name):
    gen = torch.Generator().manual_seed(0)
    q, p = torch.randn(3, 7, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    batched = logits(q, p, name)
    assert batched.shape == (3, 7, 4)
    for e in range(3):
        assert torch.allclose(batched[e], -DISTANCES[name](q[e], p[e]), atol=1e-5)


def test_l2_matches_the_difference_formula_on_random_features():
    gen = torch.Generator().manual_seed(1)
    q, p = torch.randn(10, 64, generator=gen), torch.randn(5, 64, generator=gen)
    direct = ((q[:, None] - p[None]) ** 2).sum(-1)
    assert torch.allclose(l2(q, p), direct, rtol=1e-4, atol=1e-4)


def test_prototypes_are_class_means_in_a_two_by_two_case():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [20.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.equal(prototypes(features, labels, 2), torch.tensor([[2.0, 3.0], [15.0, 1.0]]))


def test_prototypes_do_not_depend_on_row_order_or_even_shots():
    features = torch.tensor([[10.0, 0.0], [1.0, 2.0], [20.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    labels = torch.tensor([1, 0, 1, 0, 0])
    assert torch.allclose(prototypes(features, labels, 2), torch.tensor([[3.0, 4.0], [15.0, 1.0]]))
