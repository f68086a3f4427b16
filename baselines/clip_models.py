"""open_clip models from local weight files (never from the network), for WinCLIP and InCTRL."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark.features.weights import RANDOM, WeightFile, WeightStore, fixed_random_init


def clip_state_dict(state: dict) -> dict:
    """open_clip release files may wrap the weights in 'state_dict' and prefix them with 'module.'."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def register_model_config(path: str | None) -> None:
    """A JSON architecture for open_clip (custom or tiny test models), named by the file's stem."""
    if path:
        import open_clip

        open_clip.add_model_config(Path(path))


def load_clip(model_name: str, weight: WeightFile | None, store: WeightStore, model_config: str | None = None):
    """An open_clip model in eval mode and the sha256 of its weights (RANDOM when weight is None)."""
    import open_clip

    if weight is not None:  # a missing file is one line before seconds of random initialisation
        store.resolve(weight)
    register_model_config(model_config)
    with fixed_random_init():
        model = open_clip.create_model(model_name, pretrained=None)
    sha256 = RANDOM
    if weight is not None:
        state, sha256 = store.load_state_dict(weight)
        model.load_state_dict(clip_state_dict(state), strict=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval(), sha256


class BlockTokens:
    """Collects the token outputs of chosen vision-transformer blocks (1-indexed, as InCTRL's
    out_layers) during one forward pass, batch first: {block: [B, tokens, width]}."""

    def __init__(self, visual, blocks: list[int]):
        self.visual, self.blocks, self.outputs = visual, list(blocks), {}
        self.handles = [visual.transformer.resblocks[b - 1].register_forward_hook(self._hook(b)) for b in self.blocks]

    def _hook(self, block: int):
        def hook(_module, _inputs, output):
            self.outputs[block] = output

        return hook

    def take(self, batch: int) -> list[torch.Tensor]:
        out = []
        for block in self.blocks:
            tokens = self.outputs.pop(block)
            if tokens.shape[0] != batch:  # open_clip 2.24 runs its blocks sequence-first: [tokens, B, width]
                tokens = tokens.permute(1, 0, 2)
            out.append(tokens)
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
