"""`state.restored_after`: whatever the block does to a model, the model is put back as found."""
import torch
from torch import nn

from persample.conformance.snapshot import ModelSnapshot
from persample.state import restored_after


def test_everything_a_block_can_do_to_a_model_is_undone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    model[1].running_var[0] = float("nan")  # NaN stays NaN: unchanged
    model[0].weight.grad = torch.ones(4, 3)
    before = ModelSnapshot.of(model)
    weight = model[0].weight
    with restored_after(model):
        with torch.no_grad():
            model[0].weight.mul_(2)  # a value, in place
        model[2].weight = nn.Parameter(torch.zeros(2, 4))  # a parameter replaced
        model[1].running_mean.add_(1)  # a buffer
        model[0].weight.grad = None  # .grad
        model.train()  # modes
        model[0].register_forward_hook(lambda *a: None)  # a hook left behind
        model[2].register_full_backward_hook(lambda *a: None)
        model[1].cached = torch.ones(1)  # an attribute set
        model[0].bias.requires_grad_(False)  # a parameter frozen
    assert before.differences(model) == []
    assert model[0].weight is weight
