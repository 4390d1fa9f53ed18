"""The recurrent rules (`persample.rules.recurrent`: nn.RNN tanh and relu, nn.GRU, nn.LSTM): in
every configuration of the layer and its call, the per-sample gradients of every weight and bias
are those of a float64 loop calling the layer on each sample alone, the unrolled forward with
per-sample weights is the layer's forward (output, h_n and c_n), and the batch gradient is the sum
of the per-sample ones.

A configuration: 1 or 2 layers, one direction or two, batch_first or time-major, with or without
biases, LSTM's proj_size, h0 (and c0) given or not. The gradient of the loss with respect to the
outputs is of random sign, with None for the outputs that do not reach the loss (h_n, c_n, or the
output sequence itself)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from persample.layers import LayerInput
from persample.rules.attention import shared_weights
from persample.rules.registry import trainable_locals
from persample.rules.recurrent import RecurrentRule as Rule
from persample.rules.recurrent import recurrent_params

B, T, INPUT, HIDDEN = 3, 4, 3, 4


@dataclass(frozen=True)
class Config:
    """One recurrent layer and one call of it."""

    kind: str  # "tanh", "relu" (nn.RNN), "GRU", "LSTM"
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    bias: bool = True
    proj_size: int = 0  # LSTM only
    given_state: bool = False  # h0 (and c0) passed

    def __str__(self) -> str:
        default = Config(self.kind)
        return "-".join([self.kind] + [f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__
                                        if k != "kind" and getattr(self, k) != getattr(default, k)])


LAYOUTS = [
    {},
    {"batch_first": False},
    {"given_state": True},
    {"bias": False, "batch_first": False},
    {"layers": 2},
    {"bidirectional": True},
    {"layers": 2, "bidirectional": True, "batch_first": False, "given_state": True},
    {"layers": 2, "bidirectional": True, "bias": False},
]
PROJECTED = [{}, {"layers": 2, "bidirectional": True, "given_state": True}, {"batch_first": False, "given_state": True}]
CONFIGS = [Config(kind, **layout) for kind, layout in itertools.product(["tanh", "relu", "GRU", "LSTM"], LAYOUTS)]
CONFIGS += [Config("LSTM", proj_size=2, **layout) for layout in PROJECTED]


def layer(config: Config) -> nn.RNNBase:
    """The layer of `config` in float64, training mode (no dropout)."""
    torch.manual_seed(0)
    common = {"num_layers": config.layers, "bias": config.bias, "batch_first": config.batch_first,
              "bidirectional": config.bidirectional}
    if config.kind == "LSTM":
        return nn.LSTM(INPUT, HIDDEN, proj_size=config.proj_size, **common).double()
    if config.kind == "GRU":
        return nn.GRU(INPUT, HIDDEN, **common).double()
    return nn.RNN(INPUT, HIDDEN, nonlinearity=config.kind, **common).double()


def call(config: Config, seed: int = 1) -> LayerInput:
    """The arguments of one call on a batch of B: the input, and (h0[, c0]) when given."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, INPUT) if config.batch_first else (T, B, INPUT), generator=generator, dtype=torch.float64)
    if not config.given_state:
        return LayerInput.of(x)
    states = config.layers * (2 if config.bidirectional else 1)
    h0 = torch.randn(states, B, config.proj_size or HIDDEN, generator=generator, dtype=torch.float64)
    if config.kind != "LSTM":
        return LayerInput.of(x, h0)
    return LayerInput.of(x, (h0, torch.randn(states, B, HIDDEN, generator=generator, dtype=torch.float64)))


def sample_call(config: Config, inputs: LayerInput, n: int) -> LayerInput:
    """The call of sample n alone: its rows of the input (dim 1 when time-major) and of h0, c0 (dim 1)."""
    x = inputs.args[0].narrow(0 if config.batch_first else 1, n, 1)
    if len(inputs.args) == 1:
        return LayerInput.of(x)
    state = inputs.args[1]
    return LayerInput.of(x, tuple(s[:, n:n + 1] for s in state) if isinstance(state, tuple) else state[:, n:n + 1])


def leaves(structure) -> list:
    """The tensors (and Nones) of a nested (output, h_n) or (output, (h_n, c_n)), in order."""
    if structure is None or isinstance(structure, torch.Tensor):
        return [structure]
    return [leaf for part in structure for leaf in leaves(part)]


def random_grad_out(config: Config, outputs, reaching: str, seed: int = 2):
    """∂loss/∂outputs of random sign, None where the output does not reach the loss: `reaching` is
    "all", "sequence" (h_n and c_n do not reach it) or "states" (the output sequence does not)."""
    generator = torch.Generator().manual_seed(seed)

    def grad(t: torch.Tensor, reaches: bool):
        return torch.randn(t.shape, generator=generator, dtype=t.dtype) if reaches else None

    output, state = outputs
    sequence, states = reaching in ("all", "sequence"), reaching in ("all", "states")
    if config.kind == "LSTM":
        return grad(output, sequence), (grad(state[0], states), grad(state[1], reaching == "all"))
    return grad(output, sequence), grad(state, states)


def batch_dim(config: Config, position: int) -> int:
    """Where the sample is in the `position`-th output tensor: the output sequence by batch_first,
    h_n and c_n always dim 1."""
    return 0 if position == 0 and config.batch_first else 1


def loop_reference(module: nn.RNNBase, config: Config, inputs: LayerInput, grad_out) -> dict:
    """{name: (B, *shape)}: sample by sample, the layer called on that sample alone and autograd of
    ⟨its outputs, its rows of grad_out⟩, for the weights that require grad."""
    names = [name for name in module._flat_weights_names if module.get_parameter(name).requires_grad]
    per_sample = {name: [] for name in names}
    for n in range(B):
        one = sample_call(config, inputs, n)
        outputs = leaves(module(*one.args))
        total = sum((out * g.narrow(batch_dim(config, i), n, 1)).sum()
                    for i, (out, g) in enumerate(zip(outputs, leaves(grad_out))) if g is not None)
        grads = torch.autograd.grad(total, [module.get_parameter(name) for name in names], allow_unused=True)
        for name, grad in zip(names, grads):
            per_sample[name].append(grad if grad is not None else torch.zeros_like(module.get_parameter(name)))
    return {name: torch.stack(grads) for name, grads in per_sample.items()}


def assert_same_outputs(got, want, tolerance: float = 1e-12) -> None:
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("reaching", ["all", "sequence", "states"])
def test_per_sample_gradients_are_the_loops_over_samples_alone(config, reaching):
    module, inputs = layer(config), call(config)
    grad_out = random_grad_out(config, module(*inputs.args), reaching)
    want = loop_reference(module, config, inputs, grad_out)
    trainable = trainable_locals(module, Rule.params)
    got = Rule.grad_sample(module, inputs, grad_out, trainable)
    assert set(got) == set(want) == trainable == set(module._flat_weights_names)
    for name in want:
        assert got[name].shape == (B, *module.get_parameter(name).shape)
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_the_batch_gradient_is_the_sum_of_the_per_sample_ones(config):
    module, inputs = layer(config), call(config)
    grad_out = random_grad_out(config, module(*inputs.args), "all")
    trainable = trainable_locals(module, Rule.params)
    per_sample = Rule.grad_sample(module, inputs, grad_out, trainable)
    summed = Rule.grad_batch(module, inputs, grad_out, trainable)
    assert set(summed) == trainable
    for name in trainable:
        torch.testing.assert_close(summed[name], per_sample[name].sum(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_expanded_forward_with_the_layers_own_tensors_is_the_layers_forward(config, mode):
    module, inputs = layer(config), call(config)
    module.train(mode == "train")
    want = module(*inputs.args)
    shared = shared_weights(module, Rule.params, B)
    assert_same_outputs(Rule.expanded_forward(module, inputs, shared), want)
    copies = {name: w.contiguous() for name, w in shared.items()}  # the same values, not stride-0: per-sample products
    assert_same_outputs(Rule.expanded_forward(module, inputs, copies), want)


@pytest.mark.parametrize("config", CONFIGS[::3], ids=str)
def test_the_expanded_forward_computes_each_sample_with_its_own_weights(config):
    module, inputs = layer(config), call(config)
    torch.manual_seed(3)
    weights = {name: w + 0.1 * torch.randn(w.shape, dtype=w.dtype) for name, w in
               shared_weights(module, Rule.params, B).items()}
    outputs = leaves(Rule.expanded_forward(module, inputs, weights))
    for n in range(B):
        want = leaves(functional_call(module, {name: w[n] for name, w in weights.items()}, sample_call(config, inputs, n).args))
        assert_same_outputs([out.narrow(batch_dim(config, i), n, 1) for i, out in enumerate(outputs)], want)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.given_state], ids=str)
def test_the_expanded_forward_passes_on_the_gradients_of_its_input_and_initial_state(config):
    """What expand differentiates: with stride-0 weights requiring grad, one backward gives the
    layer's own gradients of the input, h0 and c0, and per-sample weight gradients summing to the
    layer's weight gradients."""
    module, inputs = layer(config), call(config)
    arguments = [t.clone().requires_grad_() for t in leaves(inputs.args)]
    x, state = arguments[0], (arguments[1] if len(arguments) == 2 else tuple(arguments[1:]))
    grad_out = random_grad_out(config, module(x, state), "all")
    total = sum((o * g).sum() for o, g in zip(leaves(module(x, state)), leaves(grad_out)))
    want = torch.autograd.grad(total, arguments + list(module.parameters()))
    weights = shared_weights(module, Rule.params, B, trainable_locals(module, Rule.params))
    outputs = Rule.expanded_forward(module, LayerInput.of(x, state), weights)
    total = sum((o * g).sum() for o, g in zip(leaves(outputs), leaves(grad_out)))
    got = torch.autograd.grad(total, arguments + [weights[name] for name in module._flat_weights_names])
    for g, w in zip(got[:len(arguments)], want[:len(arguments)]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    for g, w in zip(got[len(arguments):], want[len(arguments):]):
        assert g.shape[0] == B
        torch.testing.assert_close(g.sum(0), w, rtol=1e-10, atol=1e-12)


def test_a_second_derivative_through_the_shared_weights_is_the_per_sample_forwards():
    """Under create_graph the per-sample gradients stay differentiable (the shared fast path's
    backward gives way to the per-sample products'), e.g. for a gradient-norm penalty."""
    config = Config("GRU", layers=2, batch_first=False)
    module, inputs = layer(config), call(config)
    x = inputs.args[0].clone().requires_grad_()
    names = module._flat_weights_names

    def penalty(make_copies) -> torch.Tensor:
        weights = make_copies(shared_weights(module, names, B, names))
        output, _ = Rule.expanded_forward(module, LayerInput.of(x), weights)
        grads = torch.autograd.grad(output.square().sum(), [weights[n] for n in names], create_graph=True)
        return sum(g.square().sum() for g in grads)

    fast = torch.autograd.grad(penalty(lambda w: w), x)[0]
    per_sample = torch.autograd.grad(penalty(lambda w: {n: t.contiguous() for n, t in w.items()}), x)[0]
    torch.testing.assert_close(fast, per_sample, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("config", [Config("GRU"), Config("LSTM", batch_first=False)], ids=str)
def test_the_rule_says_where_the_sample_is_in_each_output(config):
    dims = Rule.output_sample_dims(layer(config))
    flat = [dims[0], *(dims[1] if isinstance(dims[1], tuple) else (dims[1],))]
    assert flat == [batch_dim(config, position) for position in range(len(flat))]
    assert len(flat) == (3 if config.kind == "LSTM" else 2)


def test_only_the_trainable_tensors_are_computed():
    config = Config("LSTM", layers=2, bidirectional=True, proj_size=2)
    module, inputs = layer(config), call(config)
    module.weight_hh_l0.requires_grad_(False)
    module.bias_ih_l1_reverse.requires_grad_(False)
    grad_out = random_grad_out(config, module(*inputs.args), "all")
    trainable = trainable_locals(module, Rule.params)
    assert trainable == set(module._flat_weights_names) - {"weight_hh_l0", "bias_ih_l1_reverse"}
    want = loop_reference(module, config, inputs, grad_out)
    for asked in (trainable, {"weight_hr_l1_reverse"}, {"weight_ih_l0", "bias_hh_l1"}, set()):
        got = Rule.grad_sample(module, inputs, grad_out, frozenset(asked))
        assert set(got) == asked
        for name in asked:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-11)


def test_outputs_that_do_not_reach_the_loss_give_zero_gradients():
    config = Config("GRU")
    module, inputs = layer(config), call(config)
    got = Rule.grad_sample(module, inputs, (None, None), trainable_locals(module, Rule.params))
    assert set(got) == set(module._flat_weights_names) and all(not g.any() for g in got.values())


def test_the_parameters_claimed_cover_every_layer_and_direction():
    module = nn.LSTM(3, 4, num_layers=3, bidirectional=True, proj_size=2)
    assert set(module._flat_weights_names) <= set(recurrent_params())
    assert trainable_locals(module, Rule.params) == {name for name, _ in module.named_parameters()}


def test_dropout_between_layers_in_training_mode_is_refused():
    with pytest.warns(UserWarning):  # torch: dropout with one layer does nothing
        one_layer = nn.GRU(3, 4, dropout=0.5)
    assert Rule.applies(one_layer) is None
    two = nn.GRU(3, 4, num_layers=2, dropout=0.5)
    assert "dropout" in Rule.applies(two)
    assert Rule.applies(two.eval()) is None
    with pytest.raises(ValueError, match="dropout"):
        Rule.grad_sample(two.train(), LayerInput.of(torch.randn(T, B, 3)), (torch.randn(T, B, 4), None),
                         {"weight_ih_l0"})


def test_a_packed_sequence_or_an_unbatched_input_is_refused():
    module = nn.LSTM(3, 4, batch_first=True)
    packed = pack_padded_sequence(torch.randn(B, T, 3), [4, 3, 2], batch_first=True)
    assert "PackedSequence" in Rule.refuses_input(module, LayerInput.of(packed))
    assert "unbatched" in Rule.refuses_input(module, LayerInput.of(torch.randn(T, 3)))
    assert Rule.refuses_input(module, LayerInput.of(torch.randn(B, T, 3))) is None
    with pytest.raises(ValueError, match="PackedSequence"):
        Rule.grad_sample(module, LayerInput.of(packed), (None, None), {"weight_ih_l0"})


@pytest.mark.parametrize("kind, gates", [(nn.RNN, 1), (nn.GRU, 3), (nn.LSTM, 4)])
def test_the_flop_count_counts_the_products_and_only_the_trainable_gradients(kind, gates):
    module = kind(INPUT, HIDDEN, num_layers=2, batch_first=True)
    inputs = LayerInput.of(torch.randn(B, T, INPUT))
    g, tokens = gates * HIDDEN, B * T
    first, rest = 2 * g * (INPUT + HIDDEN), 2 * g * (HIDDEN + HIDDEN)
    biases = 2 * 2 * g
    everything = Rule.flops(module, inputs, None, trainable_locals(module, Rule.params))
    assert everything.forward == tokens * (first + rest + biases)
    assert everything.input_grad == tokens * 2 * g * INPUT
    assert everything.param_grad == tokens * (first + rest - 2 * g * INPUT) + tokens * (first + rest + biases)
    frozen = Rule.flops(module, inputs, None, set())
    assert frozen.param_grad == 0 and frozen.input_grad == tokens * (first + rest)
    assert Rule.flops(module, inputs, None, {"bias_hh_l1"}).param_grad == tokens * (first + rest - 2 * g * INPUT + g)
