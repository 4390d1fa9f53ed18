"""A method of your own in ten lines: torch.func's vmap(grad) as a persample plugin.

Run the whole conformance matrix against it without forking persample:
    pytest conformance --method examples/torch_func_plugin.py:method
or, once it lives in your package, advertise it in your pyproject.toml:
    [project.entry-points."persample.methods"]
    my-vmap = "mylib.persample_plugin:method"
"""
import torch
from torch.func import functional_call, grad, vmap

import persample


class MyVmap(persample.Method):
    capabilities = persample.Capabilities(name="my-vmap", summary="torch.func vmap(grad), as a plugin")

    def _prepare(self, model, loss_fn, example_batch):
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        state = {**{n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}, **dict(model.named_buffers())}

        def one(params, x, y):
            return loss_fn(functional_call(model, (params, state), (x.unsqueeze(0),)), y.unsqueeze(0))[0]

        return lambda inputs, targets: vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, targets)


method = MyVmap()
