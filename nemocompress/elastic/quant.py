"""Quantization-aware elastic training through NVIDIA ModelOpt (the ``quant`` extra): fake quantization.

quantize_(model, "fp8", samples)          # ModelOpt's FP8 (or NVFP4) default config, calibrated on samples
state = quantizer_state(model)            # per-quantizer amax (the per-tensor scales), kept as trained
export_quantized(sliced, "out")           # ModelOpt's Hugging Face export: FP8 weights + weight/input scales

Masks act on a quantized model as on a plain one (a masked input is zero before its quantizer); a sliced
size takes the parent's per-tensor amax unchanged (scales are never pruned), so its fake-quantized forward
equals the masked parent's. FP8 fake quantization runs on CPU; NVFP4 needs a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import NemocompressError

__all__ = ["QUANT_FORMATS", "QuantError", "check_quant", "export_quantized", "load_quantizer_state",
           "quantize_", "quantizer_state", "strip_quantizers"]  # fmt: skip

#: --quant name -> ModelOpt config name.
QUANT_FORMATS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}
CALIBRATION_SAMPLES = 4


class QuantError(NemocompressError, ValueError):
    """Bad quantization settings or a missing ModelOpt."""


def _mtq():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError:
        raise QuantError("--quant needs NVIDIA ModelOpt: pip install nemocompress[quant]") from None
    return mtq


def check_quant(name: str | None) -> None:
    """Refuse an unknown format, a missing ModelOpt, or NVFP4 without a GPU, before any work."""
    if name is None:
        return
    if name not in QUANT_FORMATS:
        raise QuantError(f"--quant {name!r}: use one of {', '.join(QUANT_FORMATS)}")
    _mtq()
    if name == "nvfp4" and not torch.cuda.is_available():
        raise QuantError(
            "--quant nvfp4 needs a GPU (NVFP4 fake quantization has no CPU kernels); use fp8 on CPU"
        )


def quantize_(model: nn.Module, name: str, samples: torch.Tensor) -> None:
    """Insert ModelOpt's fake quantizers for ``name`` into ``model`` in place, calibrated (amax) on the first
    few of ``samples`` ``[N, S]`` token ids."""
    mtq = _mtq()
    config = getattr(mtq, QUANT_FORMATS[name])
    device = next(model.parameters()).device

    def forward_loop(m):
        with torch.no_grad():
            for row in samples[:CALIBRATION_SAMPLES]:
                m(input_ids=row[None].to(device), use_cache=False)

    mtq.quantize(model, config, forward_loop)


def _quantizers(model: nn.Module):
    from modelopt.torch.quantization.nn import TensorQuantizer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, TensorQuantizer)]


def quantizer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Quantizer name -> its amax (calibrated or trained), for the quantizers that hold one."""
    return {
        n: q.amax.detach().cpu().clone()
        for n, q in _quantizers(model)
        if getattr(q, "amax", None) is not None
    }


def load_quantizer_state(
    model: nn.Module, state: dict[str, torch.Tensor], rename: Callable[[str], str] = lambda n: n
) -> None:
    """Set every quantizer's amax from ``state`` (keyed by ``rename(name)``: a sliced model's name -> the
    parent's). A quantizer the state lacks is an error (the scales would be recalibrated, not kept)."""
    for name, q in _quantizers(model):
        if getattr(q, "amax", None) is None:
            continue
        key = rename(name)
        if key not in state:
            raise QuantError(
                f"no trained scale for quantizer {key}; the RUN's quantizer state does not match"
            )
        q.amax = state[key].to(q.amax.device)


def strip_quantizers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A quantized model's state dict without its quantizers' entries: the stock checkpoint's weights."""
    return {k: v for k, v in state_dict.items() if "_quantizer." not in k}


def export_quantized(model: nn.Module, out_dir) -> None:
    """ModelOpt's unified Hugging Face export (quantized weights, per-tensor scales, ``hf_quant_config.json``)."""
    from modelopt.torch.export import export_hf_checkpoint

    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    export_hf_checkpoint(model, export_dir=str(out_dir))
