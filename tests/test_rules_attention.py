"""The nn.MultiheadAttention rule (`persample.rules.attention`): in every configuration of the layer
and of its call, its per-sample gradients are those of a float64 loop calling the layer on each
sample alone, its batched forward with per-sample weights is the layer's forward, and its batch
gradient is the sum of its per-sample ones.

A configuration is a layer (batch_first or time-major, kdim/vdim, bias, add_bias_kv,
add_zero_attn) and a call (self- or cross-attention, key_padding_mask bool or float, attn_mask 2-D
or 3-D (B·heads, L, S), need_weights, average_attn_weights, is_causal with its mask). The gradient
of the loss with respect to the outputs is of random sign, and None for the attention weights
when they do not reach the loss (or are not returned)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call

from persample.layers import LayerInput
from persample.rules.attention import MultiheadAttentionRule as Rule
from persample.rules.attention import shared_weights
from persample.rules.registry import owned_tensor, trainable_locals

B, L, S, E, HEADS = 3, 4, 5, 8, 2


@dataclass(frozen=True)
class Config:
    """One layer configuration and one call of it."""

    batch_first: bool = True
    kdim: int | None = None  # also vdim: separate q, k, v projection weights when not E
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    self_attention: bool = False  # mha(x, x, x)
    key_padding_mask: str | None = None  # "bool" | "float"
    attn_mask: str | None = None  # "2d" | "3d" (bool unless key_padding_mask is float)
    need_weights: bool = True
    average_attn_weights: bool = True
    is_causal: bool = False  # with a causal 2-D attn_mask

    def __str__(self) -> str:
        default = Config()
        return "-".join(f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__
                        if getattr(self, k) != getattr(default, k)) or "default"


CONFIGS = [
    Config(),
    Config(batch_first=False),
    Config(self_attention=True),
    Config(self_attention=True, batch_first=False),
    Config(kdim=6),
    Config(kdim=6, batch_first=False, bias=False),
    Config(bias=False),
    Config(add_bias_kv=True),
    Config(add_zero_attn=True),
    Config(add_bias_kv=True, add_zero_attn=True, key_padding_mask="bool", attn_mask="2d"),
    Config(key_padding_mask="bool"),
    Config(key_padding_mask="float", batch_first=False),
    Config(attn_mask="2d"),
    Config(attn_mask="3d"),
    Config(attn_mask="3d", batch_first=False, key_padding_mask="float"),
    Config(need_weights=False),
    Config(need_weights=False, key_padding_mask="bool", attn_mask="3d"),
    Config(need_weights=False, add_bias_kv=True, add_zero_attn=True, batch_first=False),
    Config(average_attn_weights=False),
    Config(average_attn_weights=False, self_attention=True, attn_mask="2d", add_zero_attn=True),
    Config(is_causal=True, self_attention=True),
    Config(is_causal=True, self_attention=True, need_weights=False),
    Config(is_causal=True, self_attention=True, need_weights=False, key_padding_mask="bool"),
    Config(is_causal=True, need_weights=False, batch_first=False, kdim=6, add_bias_kv=True),
]


def layer(config: Config) -> nn.MultiheadAttention:
    """The layer of `config` in float64, training mode, no dropout."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, bias=config.bias, add_bias_kv=config.add_bias_kv,
                                add_zero_attn=config.add_zero_attn, kdim=config.kdim, vdim=config.kdim,
                                batch_first=config.batch_first).double()
    with torch.no_grad():  # bias_k, bias_v and the biases start at zero: make every parameter matter
        for p in mha.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mha


def call(config: Config, seed: int = 1) -> LayerInput:
    """The arguments of one call of `config`'s layer on a batch of B: (query, key, value) and options."""
    generator = torch.Generator().manual_seed(seed)

    def sequence(length: int, width: int) -> torch.Tensor:
        shape = (B, length, width) if config.batch_first else (length, B, width)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    query = sequence(L, E)
    if config.self_attention:
        key = value = query
    else:
        key, value = sequence(S, config.kdim or E), sequence(S, config.kdim or E)
    source = key.shape[1] if config.batch_first else key.shape[0]
    options = {"need_weights": config.need_weights, "average_attn_weights": config.average_attn_weights}
    boolean = config.key_padding_mask != "float"
    if config.key_padding_mask == "bool":  # the last source position of samples 1.. is padding
        options["key_padding_mask"] = (torch.arange(source) == source - 1).expand(B, source) & (
            torch.arange(B) > 0).unsqueeze(1)
    elif config.key_padding_mask == "float":
        options["key_padding_mask"] = torch.randn(B, source, generator=generator, dtype=torch.float64)
    if config.attn_mask == "2d" or config.is_causal:
        causal = torch.ones(L, source, dtype=torch.bool).triu(1)
        options["attn_mask"] = causal if boolean else causal.double() * -1e9
    elif config.attn_mask == "3d":
        options["attn_mask"] = (torch.rand(B * HEADS, L, source, generator=generator) < 0.3).logical_and(
            torch.arange(source) > 0) if boolean else torch.randn(B * HEADS, L, source, generator=generator,
                                                                   dtype=torch.float64)
    if config.is_causal:
        options["is_causal"] = True
    return LayerInput((query, key, value), options)


def sample_call(config: Config, inputs: LayerInput, n: int) -> LayerInput:
    """The call of sample n alone: its rows of the tensors (dim 1 when time-major) and of the masks
    (its heads' rows of a 3-D attn_mask)."""
    query, key, value = inputs.args
    dim = 0 if config.batch_first else 1
    one = {id(t): t.narrow(dim, n, 1) for t in (query, key, value)}
    options = dict(inputs.kwargs)
    if "key_padding_mask" in options:
        options["key_padding_mask"] = options["key_padding_mask"][n:n + 1]
    if "attn_mask" in options and options["attn_mask"].dim() == 3:
        options["attn_mask"] = options["attn_mask"][n * HEADS:(n + 1) * HEADS]
    return LayerInput((one[id(query)], one[id(key)], one[id(value)]), options)


def random_grad_out(outputs, with_weights: bool, seed: int = 2):
    """∂loss/∂(attn_output, attn_weights): random sign, the weights' None unless `with_weights`."""
    generator = torch.Generator().manual_seed(seed)
    output, weights = outputs
    grad = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    grad_weights = (torch.randn(weights.shape, generator=generator, dtype=weights.dtype)
                    if with_weights and weights is not None else None)
    return grad, grad_weights


def loop_reference(mha: nn.MultiheadAttention, config: Config, inputs: LayerInput, grad_out) -> dict:
    """{name: (B, *shape)}: sample by sample, the layer called on that sample alone and autograd of
    ⟨its outputs, its rows of grad_out⟩ (time-major: the output's sample is dim 1; the weights'
    is always dim 0)."""
    names = sorted(trainable_locals(mha, Rule.params))
    dim = 0 if config.batch_first else 1
    per_sample = {name: [] for name in names}
    for n in range(B):
        one = sample_call(config, inputs, n)
        output, weights = mha(*one.args, **one.kwargs)
        total = (output * grad_out[0].narrow(dim, n, 1)).sum()
        if grad_out[1] is not None:
            total = total + (weights * grad_out[1][n:n + 1]).sum()
        grads = torch.autograd.grad(total, [mha.get_parameter(name) for name in names])
        for name, grad in zip(names, grads):
            per_sample[name].append(grad)
    return {name: torch.stack(grads) for name, grads in per_sample.items()}


def quiet(function, *args):
    """`function(*args)` without torch's warning about a bool and a float mask together."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args)


def assert_same_outputs(got, want, tolerance: float = 1e-12) -> None:
    assert (got[1] is None) == (want[1] is None)
    for g, w in zip(got, want):
        if w is not None:
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=tolerance, atol=tolerance, equal_nan=True)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("with_weights", [False, True], ids=["weights-grad-None", "weights-grad"])
def test_per_sample_gradients_are_the_loops_over_samples_alone(config, with_weights):
    mha, inputs = layer(config), call(config)
    grad_out = random_grad_out(quiet(lambda: mha(*inputs.args, **inputs.kwargs)), with_weights)
    want = quiet(loop_reference, mha, config, inputs, grad_out)
    trainable = trainable_locals(mha, Rule.params)
    got = quiet(Rule.grad_sample, mha, inputs, grad_out, trainable)
    assert set(got) == set(want) == trainable
    for name in want:
        assert got[name].shape == (B, *mha.get_parameter(name).shape)
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_the_batch_gradient_is_the_sum_of_the_per_sample_ones(config):
    mha, inputs = layer(config), call(config)
    grad_out = random_grad_out(quiet(lambda: mha(*inputs.args, **inputs.kwargs)), True)
    trainable = trainable_locals(mha, Rule.params)
    per_sample = quiet(Rule.grad_sample, mha, inputs, grad_out, trainable)
    summed = quiet(Rule.grad_batch, mha, inputs, grad_out, trainable)
    assert set(summed) == trainable
    for name in trainable:
        torch.testing.assert_close(summed[name], per_sample[name].sum(0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("mode", ["train", "eval", "eval-no-grad"])
def test_the_expanded_forward_with_the_layers_own_tensors_is_the_layers_forward(config, mode):
    """In eval mode without autograd torch may take its fused path: the same values."""
    mha, inputs = layer(config), call(config)
    mha.train(mode == "train")
    with torch.set_grad_enabled(mode != "eval-no-grad"):
        want = quiet(lambda: mha(*inputs.args, **inputs.kwargs))
        got = quiet(Rule.expanded_forward, mha, inputs, shared_weights(mha, Rule.params, B))
    assert_same_outputs(got, want)


@pytest.mark.parametrize("config", CONFIGS[::3], ids=str)
def test_the_expanded_forward_computes_each_sample_with_its_own_weights(config):
    """Weights that differ per sample, not stride-0 copies: sample n's outputs are the layer's with
    weights[·][n] on sample n alone."""
    mha, inputs = layer(config), call(config)
    torch.manual_seed(3)
    weights = {name: t + 0.1 * torch.randn(t.shape, dtype=t.dtype)
               for name, t in shared_weights(mha, Rule.params, B).items()}
    output, attention = quiet(Rule.expanded_forward, mha, inputs, weights)
    dim = 0 if config.batch_first else 1
    for n in range(B):
        one = sample_call(config, inputs, n)
        own = {name: w[n] for name, w in weights.items()}
        want = quiet(functional_call, mha, own, one.args, dict(one.kwargs))
        assert_same_outputs((output.narrow(dim, n, 1), None if attention is None else attention[n:n + 1]), want)


def test_only_the_trainable_tensors_are_computed_and_the_frozen_ones_still_shape_the_result():
    config = Config(add_bias_kv=True, batch_first=False)
    mha, inputs = layer(config), call(config)
    mha.in_proj_weight.requires_grad_(False)
    mha.bias_v.requires_grad_(False)
    grad_out = random_grad_out(mha(*inputs.args, **inputs.kwargs), True)
    trainable = trainable_locals(mha, Rule.params)
    assert trainable == {"in_proj_bias", "bias_k", "out_proj.weight", "out_proj.bias"}
    want = loop_reference(mha, config, inputs, grad_out)
    for asked in (trainable, {"out_proj.bias"}, {"bias_k", "in_proj_bias"}, set()):
        got = Rule.grad_sample(mha, inputs, grad_out, frozenset(asked))
        assert set(got) == asked
        for name in asked:
            torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-10)


def test_the_rule_says_where_the_sample_is_in_each_output():
    assert Rule.output_sample_dims(layer(Config(batch_first=False))) == (1, 0)  # (L, B, E), (B, L, S)
    assert Rule.output_sample_dims(layer(Config())) == (0, 0)


def test_outputs_that_do_not_reach_the_loss_give_zero_gradients():
    config = Config()
    mha, inputs = layer(config), call(config)
    got = Rule.grad_sample(mha, inputs, (None, None), trainable_locals(mha, Rule.params))
    assert got and all(g.shape[0] == B and not g.any() for g in got.values())


def test_the_parameters_claimed_are_those_the_layers_forward_reads_out_proj_included():
    mha = nn.MultiheadAttention(E, HEADS, kdim=6, vdim=5, add_bias_kv=True)
    assert trainable_locals(mha, Rule.params) == {name for name, _ in mha.named_parameters()}
    assert owned_tensor(mha, "out_proj.weight") is mha.out_proj.weight
    assert owned_tensor(mha, "in_proj_weight") is None  # separate q, k, v weights: held as None


def test_dropout_in_training_mode_is_refused_and_eval_mode_or_no_dropout_is_not():
    mha = nn.MultiheadAttention(E, HEADS, dropout=0.1)
    assert "dropout" in Rule.applies(mha)
    assert Rule.applies(mha.eval()) is None
    assert Rule.applies(nn.MultiheadAttention(E, HEADS)) is None
    inputs = LayerInput.of(torch.randn(B, L, E), torch.randn(B, L, E), torch.randn(B, L, E))
    with pytest.raises(ValueError, match="dropout"):
        Rule.grad_sample(mha.train(), inputs, (torch.randn(L, B, E), None), {"in_proj_weight"})


def test_an_unbatched_call_has_no_sample_dimension_and_is_refused():
    mha = nn.MultiheadAttention(E, HEADS)
    x = torch.randn(L, E)
    assert "unbatched" in Rule.refuses_input(mha, LayerInput.of(x, x, x))
    assert Rule.refuses_input(mha, LayerInput.of(x[:, None], x[:, None], x[:, None])) is None
    with pytest.raises(ValueError, match="unbatched"):
        Rule.grad_sample(mha, LayerInput.of(x, x, x), (torch.randn(L, E), None), {"in_proj_weight"})


def test_is_causal_without_a_mask_is_torchs_error():
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True)
    x = torch.randn(B, L, E)
    with pytest.raises(RuntimeError, match="attn_mask"):
        Rule.expanded_forward(mha, LayerInput((x, x, x), {"is_causal": True}), shared_weights(mha, Rule.params, B))


def test_the_flop_count_counts_the_products_and_only_the_trainable_gradients():
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True)
    x, y = torch.randn(B, L, E), torch.randn(B, S, E)
    inputs = LayerInput.of(x, y, y)
    projections = 2 * B * (L + 2 * S) * E * E
    attention, out = 2 * 2 * B * L * S * E, 2 * B * L * E * E
    biases = B * (L + 2 * S) * E + B * L * E
    everything = Rule.flops(mha, inputs, None, trainable_locals(mha, Rule.params))
    assert everything.forward == projections + attention + out + biases
    assert everything.input_grad == projections  # the backward through the attention is param_grad's
    assert everything.param_grad == projections + out + biases + 2 * attention + out
    only_out = Rule.flops(mha, inputs, None, {"out_proj.weight"})
    assert only_out.param_grad == out and only_out.input_grad == projections + 2 * attention + out
    assert Rule.flops(mha, inputs, None, set()).param_grad == 0
