"""Post-training precision of a trained model: what its weights are stored as, and what computes.

- `bf16` / `fp16`: every floating tensor is stored at 16 bits (half the size on disk) and loaded
  back into float32 modules: the weights are rounded to 16 bits, the arithmetic stays float32
  (these CPUs have no fast 16-bit matmul, and the embedding bags run in float32 anyway).
- `int8`: every floating tensor of two or more dimensions (linear and expert weights, embedding
  tables, skills) is stored as int8 with one float32 scale per row (grec.int8: symmetric, w ~= q * s,
  s = max|row| / 127); vectors (biases, norms, task tokens) stay float32. At load:
  * `nn.Linear` layers large enough that int8 kernels beat float32 on the CPU become torch's
    dynamically quantized linear layers (int8 weights, activations quantized per call), built
    from exactly the stored int8 codes;
  * everything else runs in float32 on the dequantized (int8-rounded) weights: the experts'
    stacked weights in batched matmuls (torch's weight-only int8 matmul, `_weight_int8pack_mm`,
    is 6-100x slower than float32 on these CPUs at these sizes), small linear layers (int8 is
    slower below ~65k weights), embedding tables, and the layers whose weights the model reads
    directly (skill-merged bases, heads, the output projection of the task-sentence attention).

Pure PyTorch: safetensors holds the int8 codes and scales as plain tensors (no pickle).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from grec.int8 import dequantize_rows, quantize_rows

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
# Key of a stored int8 tensor's per-row scales: `<name>@scale`.
SCALE_SUFFIX = "@scale"
# Smallest linear layer (in_features * out_features) run with int8 kernels. Measured on the 2-core
# AVX2 development machine, 100 rows: 64x256 int8 takes 1.6x float32, 256x256 0.65x, 384x1536 0.57x.
DYNAMIC_INT8_MIN_WEIGHTS = 65_536
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    return precision


# ---- storage ---------------------------------------------------------------------------------------


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [..., in] -> (codes int8 [..., in], scales float32 [...]): one symmetric scale per row
    (grec.int8, the tensor converted at this boundary; the codes come back on the weight's device)."""
    codes, scales = quantize_rows(weight.detach().float().cpu().numpy())
    return torch.from_numpy(codes).to(weight.device), torch.from_numpy(scales).to(weight.device)


def encode_state(state: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """A float32 state dict -> the tensors stored at `precision` (see the module docstring)."""
    check_precision(precision)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point() or precision == "fp32":
            out[name] = tensor
        elif precision in _HALF:
            out[name] = tensor.to(_HALF[precision])
        elif tensor.dim() >= 2:
            out[name], out[name + SCALE_SUFFIX] = int8_rows(tensor)
        else:
            out[name] = tensor
    return out


def decode_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors (any precision) -> a float32 state dict."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if name + SCALE_SUFFIX in tensors:
            state[name] = torch.from_numpy(dequantize_rows(tensor.numpy(), tensors[name + SCALE_SUFFIX].numpy()))
        elif tensor.dtype in (torch.bfloat16, torch.float16):
            state[name] = tensor.float()
        else:
            state[name] = tensor
    return state


def float_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with torch's dynamically quantized linear layers given back as float
    `weight` / `bias` (their int8 weights dequantized), so a loaded int8 model can be saved again."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    quantized = {name: module for name, module in model.named_modules() if isinstance(module, DynamicLinear)}
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not any(name.startswith(prefix + ".") for prefix in quantized)}
    for prefix, module in quantized.items():
        state[f"{prefix}.weight"] = module.weight().dequantize()
        if module.bias() is not None:
            state[f"{prefix}.bias"] = module.bias().detach()
    return state


# ---- compute ---------------------------------------------------------------------------------------


def _weights_read_directly(model: nn.Module) -> set[int]:
    """Linear layers whose `.weight` the model reads itself (a quantized layer has none): the bases of
    skill-merged layers, the heads, the output projection of the task-sentence attention."""
    from grec.heads import TaskHead
    from grec.sentence import TaskSentenceEncoder
    from grec.skills import SkilledLinear

    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, SkilledLinear):
            found.add(id(module.base))
        elif isinstance(module, TaskSentenceEncoder):
            found.update(id(block.attn_out) for block in module.stack.blocks)
        elif isinstance(module, TaskHead):
            found.update(id(m) for m in module.modules() if isinstance(m, nn.Linear))
    return found


def quantize_linear_layers(model: nn.Module) -> list[str]:
    """Replaces, in place, every large enough `nn.Linear` of `model` that the model calls as a module
    with torch's dynamically quantized linear layer (int8 weights with the per-row scales of
    `int8_rows`). Returns the names replaced."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    skip = _weights_read_directly(model)
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in skip:
                continue
            if child.in_features * child.out_features < DYNAMIC_INT8_MIN_WEIGHTS:
                continue
            codes, scales = int8_rows(child.weight)
            with warnings.catch_warnings():
                # torch 2.13 marks its quantized tensors deprecated (in favour of torchao, which
                # grec does not depend on); the dynamic int8 kernels themselves are current.
                warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
                # codes * scales quantizes back to exactly `codes`: the stored int8 weights compute.
                weight = torch.quantize_per_channel(codes.float() * scales.unsqueeze(1), scales.double(),
                                                    torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
            layer = DynamicLinear(child.in_features, child.out_features, bias_=child.bias is not None,
                                  dtype=torch.qint8)
            layer.set_weight_bias(weight, None if child.bias is None else child.bias.detach())
            setattr(parent, child_name, layer)
            replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return replaced


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Sets up a model whose float32 weights were decoded from `precision` to compute as that
    precision computes (only int8 changes modules); records it as `model.precision`."""
    check_precision(precision)
    if precision == "int8":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"int8 models compute with torch's CPU int8 kernels; load them on the CPU, not {device}")
        quantize_linear_layers(model)
    model.precision = precision
    return model
