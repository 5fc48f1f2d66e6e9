from __future__ import annotations

import pytest
import torch

from danling.metrics.preprocesses import (
    flatten_batch,
    infer_task,
    preprocess,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    preprocess_regression,
)


@pytest.mark.parametrize(
    ("num_classes", "num_labels", "task"),
    [(None, None, "binary"), (3, None, "multiclass"), (None, 4, "multilabel")],
)
def test_infer_task(num_classes, num_labels, task):
    assert infer_task(num_classes, num_labels) == task


def test_infer_task_rejects_both():
    with pytest.raises(ValueError, match="num_classes"):
        infer_task(3, 4)


def test_flatten_batch_keeps_class_dimension():
    input, target = flatten_batch(torch.rand(2, 5, 3), torch.randint(0, 3, (2, 5)))
    assert input.shape == (10, 3)
    assert target.shape == (10,)


def test_flatten_batch_never_syncs(no_device_sync):
    flatten_batch(torch.rand(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(("input_shape", "target_shape"), [((3,), (4,)), ((2, 3), (3,)), ((2, 3, 4), (2,))])
def test_flatten_batch_shape_errors_name_shapes(input_shape, target_shape):
    with pytest.raises(ValueError, match=str(input_shape).replace("(", r"\(").replace(")", r"\)")):
        flatten_batch(torch.rand(input_shape), torch.zeros(target_shape))


def test_preprocess_drops_ignore_index_and_nan():
    input, target = preprocess([0.1, 0.2, 0.3, 0.4], [1.0, -100.0, float("nan"), 0.0])
    assert input.tolist() == pytest.approx([0.1, 0.4])
    assert target.tolist() == [1.0, 0.0]


def test_preprocess_keeps_the_shape_of_nested_lists():
    input, target = preprocess([[0.1, 0.2], [0.3, 0.4]], [[0, 1], [1, 0]])
    assert isinstance(input, torch.Tensor)
    assert isinstance(target, torch.Tensor)
    assert input.shape == (2, 2)
    assert target.shape == (2, 2)
    assert torch.equal(input, torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
    assert torch.equal(target, torch.tensor([[0, 1], [1, 0]]))


def test_preprocess_keeps_tensors_and_flattens_only_what_it_filters():
    scores = torch.rand(3, 4)
    input, target = preprocess(scores, torch.tensor([0, 2, 1]))  # multiclass scores keep their class dimension
    assert input is scores or torch.equal(input, scores)
    assert input.shape == (3, 4)
    assert target.shape == (3,)
    input, target = preprocess(scores, torch.tensor([0, -100, 1]))
    assert torch.equal(input, scores[[0, 2]])
    assert target.tolist() == [0, 1]
    grid = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    input, target = preprocess(grid, torch.tensor([[0, -100], [1, 0]]))
    assert input.tolist() == pytest.approx([0.1, 0.3, 0.4])
    assert target.tolist() == [0, 1, 0]


def test_preprocess_squeezes_a_single_output_column():
    input, target = preprocess(torch.tensor([[0.2], [0.9]]), torch.tensor([0, 1]))
    assert input.shape == (2,)
    assert target.shape == (2,)
    input, target = preprocess(torch.tensor([0.7]), torch.tensor([[1]]))
    assert input.shape == (1,)
    assert target.shape == (1,)


def test_preprocess_rejects_misaligned_shapes_when_filtering():
    with pytest.raises(ValueError, match="does not start with target shape"):
        preprocess(torch.rand(2, 3), torch.tensor([0, 1, -100]))


def test_flatten_batch_stores_a_single_output_column_flat():
    input, target = flatten_batch(torch.rand(5, 1), torch.rand(5))
    assert input.shape == (5,)
    assert target.shape == (5,)
    input, target = flatten_batch(torch.rand(5), torch.rand(5, 1))
    assert input.shape == (5,)
    assert target.shape == (5,)


def test_binary_sigmoid_only_for_logits():
    probs, _ = preprocess_binary([0.2, 0.9], [0, 1])
    assert probs.tolist() == pytest.approx([0.2, 0.9])
    logits = torch.tensor([-1.0, 2.0])
    squashed, _ = preprocess_binary(logits, [0, 1])
    assert torch.allclose(squashed, logits.sigmoid())


def test_binary_accepts_column_input_and_rejects_bad_targets():
    probs, target = preprocess_binary(torch.rand(4, 1), torch.tensor([0, 1, 1, 0]))
    assert probs.shape == target.shape == (4,)
    with pytest.raises(ValueError, match="0 or 1"):
        preprocess_binary(torch.rand(3), torch.tensor([0, 2, 1]))


def test_multiclass_softmax_for_logits():
    logits = torch.randn(5, 3) * 4
    probs, target = preprocess_multiclass(logits, torch.tensor([0, 1, 2, -100, 1]), num_classes=3)
    assert probs.shape == (4, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    assert target.tolist() == [0, 1, 2, 1]


def test_multilabel_drops_rows_with_ignored_labels():
    input = torch.tensor([[0.1, 0.9], [0.3, 0.4], [0.8, 0.2]])
    target = torch.tensor([[0, 1], [-100, 1], [1, 0]])
    probs, labels = preprocess_multilabel(input, target, num_labels=2)
    assert labels.tolist() == [[0, 1], [1, 0]]
    assert probs.shape == (2, 2)
    flat_probs, _ = preprocess_multilabel(input.flatten(), target.flatten(), num_labels=2)
    assert torch.equal(flat_probs, probs)


def test_regression_reshapes_and_drops_nan_rows():
    input, target = preprocess_regression(torch.arange(6.0), torch.tensor([0, 1, float("nan"), 3, 4, 5]), 2)
    assert input.tolist() == [[0.0, 1.0], [4.0, 5.0]]
    with pytest.raises(ValueError, match="num_outputs=4"):
        preprocess_regression(torch.arange(6.0), torch.arange(6.0), num_outputs=4)
    with pytest.raises(ValueError, match="non-finite"):
        preprocess_regression(torch.tensor([1.0, float("inf")]), torch.tensor([1.0, 2.0]))


def test_ragged_nested_lists_are_concatenated_row_by_row():
    input, target = preprocess([[0.1, 0.4, 0.6, 0.8], [0.1, 0.4, 0.6]], [[0, -100, 1, 0], [0, -100, 1]])
    assert input.tolist() == pytest.approx([0.1, 0.6, 0.8, 0.1, 0.6])
    assert target.tolist() == [0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="Cannot convert input"):
        preprocess([[0.1, 0.2], 0.3], [1, 0, 1])
