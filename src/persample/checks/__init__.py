"""What a method checks on the example batch before it computes anything: that the loss is per
sample, that the assumptions the method relies on hold for this model, and that its own answer on
a few samples agrees with autograd. A failed check raises `Unsupported` (or `LossNotPerSample`)
naming the layer, what was seen and the fix; nothing is computed silently wrong.
"""
from .context import CHECK_SAMPLES, CheckContext, CheckReport
from .loss import check_loss_per_sample
from .observed import check_observed
from .layout import probe_batch_layout
from .numeric import definition_check, verify_answer, weighted_identity
from .alone import samples_alone, whole_batch_gradients

__all__ = [
    "CHECK_SAMPLES", "CheckContext", "CheckReport", "check_loss_per_sample", "check_observed",
    "definition_check", "probe_batch_layout", "samples_alone", "verify_answer", "weighted_identity",
    "whole_batch_gradients",
]
