"""A pruned language model as a ``save_pretrained`` folder: what ``prunelab export`` writes for one.

Unstructured and N:M masks remove no whole unit, so nothing is compacted: the folder holds the
transformers model with its pruned weights at exactly zero (config, ``model.safetensors``, the
tokenizer), which ``AutoModelForCausalLM.from_pretrained`` loads as it is, beside
``masks.safetensors``, the keep-masks by the transformers parameter names in transformers' own
orientation (GPT-2's ``Conv1D`` weights ``(in, out)``), and ``prunelab.json``, where the level came
from with its density and N:M pattern per layer. The export is checked before it replaces the
target: transformers loads it back and gives the pruned model's logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from prunelab.errors import PrunelabError
from prunelab.io import OutputKind, atomic_write_json, check_output_folder, output_folder, save_tensors
from prunelab.models.build import example_input
from prunelab.models.causal import CausalLM, hf_state_dict
from prunelab.models.vision import import_transformers
from prunelab.pruning.mask import Mask
from prunelab.pruning.nm import nm_pattern

MASKS = "masks.safetensors"
INFO = "prunelab.json"
#: What a save_pretrained folder of a causal LM and its tokenizer may hold, and ours beside it.
LM_EXPORT = OutputKind(
    "language-model export",
    INFO,
    (
        INFO, MASKS, "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "tokenizer.model", "added_tokens.json", "chat_template.jinja",
    ),
)  # fmt: skip
#: Group sizes whose N:M pattern each layer's report gives.
PATTERN_SIZES = (4, 8, 16)


def hf_masks(lm: CausalLM, mask: Mask) -> dict[str, torch.Tensor]:
    """``mask`` by the transformers model's parameter names, in its orientation."""
    linearised = {f"{name}.weight" for name in lm.linearised}
    out = {}
    for name, keep in mask.items():
        key = name.removeprefix("model.")
        out[key] = keep.T.contiguous() if key in linearised else keep
    return out


def layer_patterns(mask: Mask) -> list[dict]:
    """Per layer: kept and total weights, density, and the N:M pattern every group of M inputs holds
    (the largest N, for M of :data:`PATTERN_SIZES` dividing the input width)."""
    rows = []
    for name, keep in mask.items():
        row = {"layer": name.removesuffix(".weight"), "kept": int(keep.sum()), "total": keep.numel()}
        row["density"] = row["kept"] / row["total"] if row["total"] else 1.0
        patterns = [f"{n}:{m}" for m in PATTERN_SIZES if (n := nm_pattern(keep, m))]
        row["n:m"] = ", ".join(patterns) or "–"
        rows.append(row)
    return rows


def export_language_model(
    loaded, directory: str | Path, *, force: bool = False, protect: Sequence[Path] = ()
) -> Path:
    """Write ``loaded`` (a :class:`~prunelab.experiments.LoadedLevel` of a causal LM) as a
    save_pretrained folder with ``masks.safetensors`` and ``prunelab.json`` (see the module docstring)."""
    from prunelab.models import resolve_model

    directory = check_output_folder(directory, LM_EXPORT, force=force, protect=protect)
    lm = loaded.model
    if not isinstance(lm, CausalLM):
        raise PrunelabError(f"{loaded.spec.model} is not a causal language model")
    t = import_transformers()
    hf = lm.model
    source = resolve_model(loaded.spec.model)
    info = {
        "format": "prunelab-language-model",
        "model": loaded.spec.model,
        "data": loaded.spec.data,
        "experiment": loaded.experiment.id,
        "seed": loaded.seed,
        "level": loaded.level,
        "method": loaded.spec.pruning.method,
        "structure": loaded.spec.pruning.structure_name(),
        "density": loaded.mask.density(),
        "layers": layer_patterns(loaded.mask),
        "masks": f"{MASKS}: keep-masks by transformers parameter name, in its own orientation",
    }
    with output_folder(directory, LM_EXPORT, force=force, protect=protect) as tmp:
        fresh = type(hf)(hf.config)
        fresh.load_state_dict(hf_state_dict(lm), strict=True)
        fresh.save_pretrained(tmp)
        source.tokenizer(loaded.spec.data).tokenizer.save_pretrained(tmp)
        save_tensors(tmp / MASKS, hf_masks(lm, loaded.mask), metadata={"format": "prunelab-masks"})
        atomic_write_json(tmp / INFO, info)
        _check_loads_back(t, lm, tmp, loaded.spec.data_info.input_shape)
    return directory


@torch.no_grad()
def _check_loads_back(t, lm: CausalLM, folder: Path, input_shape) -> None:
    back = t.AutoModelForCausalLM.from_pretrained(folder).eval()
    x = example_input(lm, (min(int(input_shape[0]), 16),), 2, generator=torch.Generator().manual_seed(0))
    was = lm.training
    lm.eval()
    try:
        ours = lm.model(input_ids=x, use_cache=False).logits
        theirs = back(input_ids=x, use_cache=False).logits
    finally:
        lm.train(was)
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise PrunelabError(
            "the save_pretrained folder does not reproduce the pruned model's logits; nothing was written"
        )
