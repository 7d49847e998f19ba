"""The CSR product with autograd equals the dense one, gradients included (gradcheck in float64)."""

import pytest
import torch

from nemocompress.xtoken.sparse import SparseMatrix, sparse_project


def _random_sparse(rows=7, cols=11, per_row=3, seed=0, dtype=torch.float64) -> SparseMatrix:
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(rows).repeat_interleave(per_row)
    c = torch.randint(0, cols, (rows * per_row,), generator=g)
    v = torch.rand(rows * per_row, generator=g, dtype=dtype)
    r[0], c[0] = 2, 4
    r[1], c[1] = 2, 4  # a duplicate coordinate: summed
    return SparseMatrix.from_entries(r, c, v, (rows, cols))


def test_from_entries_sums_duplicates_and_sorts():
    m = SparseMatrix.from_entries(
        torch.tensor([1, 0, 1, 1]), torch.tensor([2, 1, 0, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0]), (3, 3)
    )
    assert m.crow.tolist() == [0, 1, 3, 3]
    assert m.col.tolist() == [1, 0, 2]
    assert m.values.tolist() == [2.0, 3.0, 5.0]
    assert torch.equal(m.to_dense(), torch.tensor([[0, 2.0, 0], [3.0, 0, 5.0], [0, 0, 0]]))


@pytest.mark.parametrize("cols", [None, [9, 4, 0, 7], [3]])
def test_product_equals_dense(cols):
    m = _random_sparse()
    probs = torch.rand(2, 5, 7, dtype=torch.float64)
    index = None if cols is None else torch.tensor(cols)
    dense = m.to_dense() if index is None else m.to_dense()[:, index]
    out = sparse_project(probs, m.columns(index))
    assert out.shape == (2, 5, dense.shape[1])
    torch.testing.assert_close(out, probs @ dense)


def test_gradients_equal_dense_reference():
    m = _random_sparse(seed=1)
    index = torch.tensor([10, 2, 4, 5, 8])
    values = m.values.clone().requires_grad_(True)
    probs = torch.rand(6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(6, 5, dtype=torch.float64)
    (sparse_project(probs, m.columns(index), values) * weight).sum().backward()

    values_ref = m.values.clone().requires_grad_(True)
    probs_ref = probs.detach().clone().requires_grad_(True)
    w = SparseMatrix(m.crow, m.col, values_ref, m.shape).to_dense()[:, index]
    (probs_ref @ w * weight).sum().backward()
    torch.testing.assert_close(probs.grad, probs_ref.grad)
    torch.testing.assert_close(values.grad, values_ref.grad)
    outside = ~torch.isin(m.col, index)  # entries in columns not selected get no gradient
    assert outside.any() and torch.all(values.grad[outside] == 0)


def test_gradcheck_float64():
    m = _random_sparse(rows=5, cols=6, per_row=2, seed=2)
    sliced = m.columns(torch.tensor([0, 3, 5, 1]))
    probs = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    values = m.values.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, v: sparse_project(p, sliced, v), (probs, values))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="rows"):
        sparse_project(torch.rand(2, 4), _random_sparse().columns())
