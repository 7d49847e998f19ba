"""Knowledge-distillation losses as plain functions of tensors.

Notation: ``...`` is any leading token shape (``[B, S]`` or ``[N]``), ``V`` the vocabulary,
``D`` a hidden width. Conventions shared by every logit loss here:

- Probabilities come from ``softmax(logits / T)`` computed in float32 (float64 when the
  logits are float64), whatever the input dtype. The loss is multiplied by ``T**2``
  (Hinton et al., 2015) so that gradient magnitudes do not shrink as ``T`` grows; at the
  default ``T = 1`` this is a no-op.
- A token counts when ``labels != ignore_index`` and ``mask`` is true (either may be
  omitted; with both, both must hold). Masked positions never enter the computation, so
  their logits may hold anything, even NaN.
- Reduction: the sum over counted tokens divided by the number of counted tokens, or by
  ``num_items`` when given. Pass the global count of counted tokens over all micro-batches
  of an optimizer step as ``num_items`` and sum the micro-batch losses: the gradients then
  equal those of one big batch. When nothing is counted the loss is 0 (not NaN) and the
  gradients are zero.
- Logits of either model may be ``-inf`` (e.g. a masked vocabulary entry): impossible tokens
  contribute 0, not NaN. A student ``-inf`` where the teacher has mass gives a huge loss
  (log-probabilities are floored at the dtype's lowest value), as it should.

The chunked variants compute the same values, over chunks of tokens, without ever holding
both models' ``[tokens, V]`` float32 log-probabilities; see :func:`chunked_kd_loss`. The fused
variants start from the final hidden states and run the LM heads chunk by chunk too, so no full
logits exist at all (:func:`chunked_distill_loss_from_hidden`, used by the trainer).

Modules: ``registry`` (loss names -> functions and hyper-parameters), ``reduction`` (masking and
the token mean), ``divergences`` (per-token divergences), ``logits`` (losses over full logits, CE),
``chunked`` (the same over token chunks), ``fused`` (from hidden states, LM heads fused), ``hidden``
(intermediate losses).
"""

from .chunked import CHUNK_ELEMENTS, chunked_kd_loss
from .divergences import Divergence, token_divergence
from .fused import DistillLoss, chunked_distill_loss_from_hidden, chunked_kd_loss_from_hidden
from .hidden import (
    HiddenStateProjection,
    cosine_hidden_loss,
    dynamic_alpha,
    mapped_hidden_loss,
    mse_hidden_loss,
)
from .logits import (
    cross_entropy_loss,
    forward_kl,
    generalized_jsd,
    kd_loss,
    reverse_kl,
    topk_forward_kl,
    total_variation,
)
from .reduction import NumItems
from .registry import (
    KDLossSpec,
    intermediate_loss,
    intermediate_loss_names,
    kd_loss_names,
    kd_loss_spec,
    register_intermediate_loss,
    register_kd_loss,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "Divergence",
    "DistillLoss",
    "HiddenStateProjection",
    "KDLossSpec",
    "NumItems",
    "chunked_distill_loss_from_hidden",
    "chunked_kd_loss",
    "chunked_kd_loss_from_hidden",
    "cosine_hidden_loss",
    "cross_entropy_loss",
    "dynamic_alpha",
    "forward_kl",
    "generalized_jsd",
    "intermediate_loss",
    "intermediate_loss_names",
    "kd_loss",
    "kd_loss_names",
    "kd_loss_spec",
    "mapped_hidden_loss",
    "mse_hidden_loss",
    "register_intermediate_loss",
    "register_kd_loss",
    "reverse_kl",
    "token_divergence",
    "topk_forward_kl",
    "total_variation",
]
