"""The jax method's contract: compile caching, weights as arguments, frozen and tied parameters,
an untouched model, custom modules and losses, its declared capabilities and examples."""
from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import persample
import persample.jax_translate.eager
import persample.methods.jax
from persample.conformance.snapshot import ModelSnapshot
from persample.jax_translate.compiled import trace_count
from persample.methods.jax import JaxMethod
from persample.methods.registry import get
from persample.reference import compare, reference_grads, tolerance_for

QUICK = JaxMethod(optimize=False)


def assert_matches_reference(grads, model, inputs, targets, loss_fn=F.cross_entropy) -> None:
    __tracebackhide__ = True
    per_sample_loss = (lambda out, y: loss_fn(out, y, reduction="none")) if loss_fn is F.cross_entropy else loss_fn
    comparison = compare(grads, reference_grads(model, inputs, targets, per_sample_loss))
    tolerance = tolerance_for(next(model.parameters()).dtype)
    assert comparison.within(tolerance), comparison.describe(tolerance)


def batch(features: int = 5, size: int = 6, classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, features, generator=generator), torch.randint(classes, (size,), generator=generator)


def test_the_compiled_function_is_traced_once_per_structure_and_batch_shape():
    torch.manual_seed(0)
    method = get("jax")
    model = nn.Sequential(nn.Linear(5, 11), nn.Tanh(), nn.Linear(11, 3))  # a structure no other test uses
    x, y = batch()
    before = trace_count()
    step = method.prepare(model, None, (x, y))
    assert trace_count() == before + 1, "prepare traces and compiles for the example batch"
    step(x, y)
    step(*batch(seed=1))
    method.prepare(model, None, (x, y))
    twin = nn.Sequential(nn.Linear(5, 11), nn.Tanh(), nn.Linear(11, 3))  # new weights, same structure
    grads = method.prepare(twin, None, (x, y))(x, y)
    assert trace_count() == before + 1, "same structure and shapes: the compiled function is reused"
    assert_matches_reference(grads, twin, x, y)
    method.prepare(model, None, batch(size=4))
    assert trace_count() == before + 2, "a new batch size compiles once more"


def test_weights_are_arguments_so_updated_weights_are_used():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x, y = batch()
    step = QUICK.prepare(model, None, (x, y))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2).add_(0.1)
    assert_matches_reference(step(x, y), model, x, y)


def test_frozen_parameters_are_absent_and_the_rest_are_exact():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 3)).double()
    model[0].requires_grad_(False)
    x, y = batch()
    grads = QUICK(model, x.double(), y)
    assert list(grads) == ["2.weight", "2.bias"]
    assert_matches_reference(grads, model, x.double(), y)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens))).mean(1)


def test_tied_weights_appear_once_with_the_sum_of_both_uses():
    torch.manual_seed(3)
    model = Tied().double()
    tokens, targets = torch.randint(7, (5, 3)), torch.randint(7, (5,))
    grads = QUICK(model, tokens, targets)
    assert list(grads) == ["embed.weight"]
    assert_matches_reference(grads, model, tokens, targets)


def test_the_model_is_left_as_it_was_found():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Dropout(0.2), nn.Linear(4, 3))
    model[2].eval()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()  # leave some .grad behind
    snapshot = ModelSnapshot.of(model)
    grads = QUICK(model, x, y)
    assert not snapshot.differences(model)
    assert all(isinstance(g, torch.Tensor) and g.shape == (6, *p.shape) for g, p in zip(grads.values(), model.parameters()))


def test_padding_rows_of_an_embedding_get_no_gradient():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Embedding(6, 3, padding_idx=0), nn.Flatten(), nn.Linear(12, 2)).double()
    tokens, targets = torch.tensor([[0, 1, 0, 2], [3, 0, 4, 5]]), torch.tensor([0, 1])
    grads = QUICK(model, tokens, targets)
    assert torch.count_nonzero(grads["0.weight"][:, 0]) == 0
    assert_matches_reference(grads, model, tokens, targets)


class OwnParameters(nn.Module):
    """A custom module whose own parameters are used through torch functions (traced through)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 5))
        self.scale = nn.Parameter(torch.ones(4))
        self.register_buffer("offset", torch.randn(4))

    def forward(self, x, mask):
        h = F.linear(x, self.weight) * self.scale + self.offset
        h = F.relu(h, inplace=True)
        h = h.masked_fill(mask[:, :1] > 0.5, 0.0)
        return torch.softmax(h @ self.weight[:, :4].T, dim=-1)


def test_a_custom_module_with_several_inputs_gets_exact_gradients():
    torch.manual_seed(6)
    model = OwnParameters().double()
    x, targets = batch()
    mask = torch.rand(6, 2, dtype=torch.float64)
    loss = lambda out, y: F.nll_loss(out.log(), y, reduction="none")  # noqa: E731
    grads = QUICK(model, (x.double(), mask), targets, loss)
    assert set(grads) == {"weight", "scale"}
    assert_matches_reference(grads, model, (x.double(), mask), targets, loss)


def test_a_loss_module_and_in_place_activations_are_translated():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)).double()
    x, y = batch()
    loss = nn.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    assert_matches_reference(QUICK(model, x.double(), y, loss), model, x.double(), y, loss)


def test_capabilities_describe_a_jax_method_with_its_layer_vocabulary_and_what_it_refuses():
    capabilities = get("jax").capabilities
    assert capabilities.framework == "jax" and capabilities.requires == (("jax", "jax"),)
    assert capabilities.layers is None, "custom modules are traced through, so no layer list restricts them"
    assert all(name in capabilities.notes for name in ("LSTM", "Conv3d", "RMSNorm", "InstanceNorm1d"))
    assert {"translatable", "grad-mode", "autograd-functions", "plain-forward"} <= set(capabilities.relies_on)
    assert persample.available_methods()["jax"] is None


@pytest.mark.parametrize("module", [persample.methods.jax, persample.jax_translate.eager], ids=lambda m: m.__name__)
def test_the_module_examples_run(module):
    failures, tried = doctest.testmod(module, verbose=False, report=True)
    assert tried > 0 and failures == 0
