"""Building models from a config, and saving / loading them as safetensors + JSON (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from grec.baselines import MMoE, PLE, SharedBottom
from grec.config import GRecConfig
from grec.grec_model import GRec
from grec.model import MultiTaskModel
from grec.quantization import apply_precision, decode_state, encode_state, float_state_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Version 2: grouped per-task compute (stacked expert weights, skill banks, shared-prefix sentences);
# version-1 checkpoints have another parameter layout and are refused with a message.
FORMAT = {"format": "grec-model", "version": 2}

_ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    "grec": GRec,
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
}


def build_model(config: GRecConfig, pretrained_text: bool = True) -> MultiTaskModel:
    """GRec or a baseline (config.architecture), initialised from config.seed without touching the
    global random state. `pretrained_text=False` skips loading pretrained text weights (they are
    about to be replaced, as in load_model)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _ARCHITECTURES[config.architecture](config, pretrained_text=pretrained_text)


def save_model(model: MultiTaskModel, path: str | Path) -> Path:
    """Writes `path/model.safetensors` (every weight, the text encoder's included, stored at
    `model.precision`: see grec.quantization) and `path/config.json` (the full config: enough to
    rebuild the same modules, and the precision)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = encode_state(float_state_dict(model), model.precision)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"architecture": model.config.architecture,
                                                           "precision": model.precision})
    (path / CONFIG_FILE).write_text(json.dumps({**FORMAT, "precision": model.precision,
                                                "config": model.config.to_dict()}, indent=2))
    return path


def saved_config(config: dict) -> dict:
    """A saved model config as this grec reads it. Models saved before training was dropless carry
    `router.capacity_factor` (then 1.25 by default) without `router.allow_drops`: a training-only
    setting that this grec accepts only with the opt-in, so it is left out (loading never trains)."""
    router = config.get("router") or {}
    if router.get("capacity_factor") is not None and "allow_drops" not in router:
        router = {key: value for key, value in router.items() if key != "capacity_factor"}
        return {**config, "router": router}
    return config


def load_model(path: str | Path, device: str | torch.device = "cpu") -> MultiTaskModel:
    """Rebuilds the model from config.json and loads model.safetensors (strict); returns it in eval mode."""
    path = Path(path)
    document = json.loads((path / CONFIG_FILE).read_text())
    if document.get("format") != FORMAT["format"]:
        raise ValueError(f"{path / CONFIG_FILE} is not a grec model config (format {document.get('format')!r})")
    if document.get("version") != FORMAT["version"]:
        raise ValueError(f"{path / CONFIG_FILE}: saved with model layout version {document.get('version')!r}; this grec "
                         f"reads version {FORMAT['version']} (retrain the model, or use the grec release that saved it)")
    model = build_model(GRecConfig.from_dict(saved_config(document["config"])), pretrained_text=False)
    model.load_state_dict(decode_state(load_file(str(path / WEIGHTS_FILE))), strict=True)
    return apply_precision(model.to(device), document.get("precision", "fp32")).eval()
