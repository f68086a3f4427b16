"""WinCLIP+ (Jeong et al., CVPR 2023) with normal references, on anomalib's WinClipModel.

open_clip ViT-B-16-plus-240 with the LAION-400M epoch-31 weights, 240 x 240 input (squashed, as
anomalib's pre-processor), window scales 2 and 3, the compositional prompt ensemble (anomalib's 7
normal states, 4 anomalous states and 21 templates), map = mean of the zero-shot and reference
maps, image score = (text score + max reference score) / 2: all as anomalib implements them
(tests/conformance compares the two). What this adapter adds:
  - the weights come from a local file (verified, loaded with weights_only=True), never from the
    network: anomalib's constructor would download them, so it is built with pretrained=None;
  - text embeddings are computed once per class name and reused across settings and seeds;
  - an image's visual embeddings (image, window and patch embeddings) come through the feature
    cache, so a query or reference image is encoded once for all the cells that see it; the scores
    are then anomalib's own forward on those embeddings;
  - `class_names: readable` (configs/class_names.yaml, e.g. pcb1 -> printed circuit board);
    anomalib prompts with the category string as it is (`class_names: raw`);
  - the 240 x 240 map is resized back onto the original image (benchmark.api.preprocessing.to_original);
  - `resize: crop` (shorter side 240, centre crop) instead of anomalib's squash: the same on
    square images, but it drops a third of a VisA image's width (pasted back as the map's minimum).
"""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import numpy as np
import torch

from baselines.clip_adapter import OPENAI_MEAN, OPENAI_STD, ClipAdapter
from baselines.clip_models import clip_state_dict, register_model_config
from benchmark.api import NORMAL, GadbenchError, ImageBatch, Prediction, ReferenceSet
from benchmark.features.weights import RANDOM, fixed_random_init

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "WinCLIPAdapter"]


@contextlib.contextmanager
def _encoded(model, embeddings: tuple):
    """anomalib's forward and setup with `embeddings` in place of their encode_image call."""
    with mock.patch.object(model, "encode_image", lambda _images: embeddings):
        yield model


@contextlib.contextmanager
def _winclip_module(clip_model: str):
    """anomalib's WinClipModel reads its architecture and pretrained tag from module constants;
    point them at our architecture and at no download while the model is built."""
    import anomalib.models.image.winclip.torch_model as winclip_torch_model

    with mock.patch.object(winclip_torch_model, "BACKBONE", clip_model), \
            mock.patch.object(winclip_torch_model, "PRETRAINED", None):
        yield winclip_torch_model


class WinCLIPAdapter(ClipAdapter):
    name = "winclip"
    weights_name = "winclip_clip"
    supports = (NORMAL,)
    map_blur_at = "input"  # a 240 x 240 map (anomalib's); blur_sigma 0: anomalib does not blur it
    default_config = {
        "clip_model": "ViT-B-16-plus-240",
        "clip_model_config": None,  # a JSON model config for open_clip (for custom, e.g. tiny test, models)
        "image_size": 240,
        "scales": [2, 3],
        "blur_sigma": 0.0,  # anomalib's WinCLIP does not blur its map
        "resize": "squash",  # as anomalib's pre-processor; crop: shorter side to image_size + centre crop
        "class_names": "readable",  # raw: the category string, as anomalib (benchmark/data/class_names.py)
        "weights": {
            "file": "vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
            "sha256": None,
            "sha256_prefix": "8fb26589",
            "url": "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
        },
        "allow_random_weights": False,
    }

    def __init__(self, config, context):
        super().__init__(config, context)
        self._model = None
        self._weights_sha256 = None
        self._text_embeddings: dict[str, torch.Tensor] = {}

    def geometry(self) -> dict:
        if self.config["resize"] not in ("squash", "crop"):
            raise GadbenchError(f"winclip: resize must be squash or crop, not {self.config['resize']!r}")
        return {"resize": "squash"} if self.config["resize"] == "squash" else super().geometry()

    @property
    def model(self):
        """anomalib's WinClipModel, built once per process for this architecture and weights file
        and shared by every cell (each sets its own references and text before predicting)."""
        if self._model is None:
            self._model, self._weights_sha256, self._text_embeddings = self.shared_model(self._build, tuple(self.config["scales"]))
        return self._model

    def _build(self):
        register_model_config(self.config["clip_model_config"])
        weights, sha256 = None, RANDOM
        if not self.config["allow_random_weights"]:
            state, sha256 = self.context.weights.load_state_dict(self.required_weights()[0])
            weights = clip_state_dict(state)
        with fixed_random_init(), _winclip_module(self.config["clip_model"]) as module:
            model = module.WinClipModel(scales=tuple(self.config["scales"]))
        if weights is not None:
            model.clip.load_state_dict(weights, strict=True)
        return model.eval().to(self.context.device), sha256, {}  # the text embeddings are shared with it

    def text_embeddings(self, name: str) -> torch.Tensor:
        model = self.model
        if name not in self._text_embeddings:
            model._collect_text_embeddings(name)
            self._text_embeddings[name] = model.text_embeddings.clone()
        return self._text_embeddings[name]

    def _encoder_id(self) -> str:
        """What the cached embeddings depend on: architecture, weights, window scales."""
        architecture = json.dumps(self.config["clip_model_config"], sort_keys=True)
        return f"winclip:{self.config['clip_model']}:{architecture}@{self._weights_sha256[:16]}/scales{self.config['scales']}"

    def _embeddings(self, batch: ImageBatch) -> tuple:
        """anomalib's encode_image output for the batch: (image [B, D], windows per scale
        [B, W, D], patches [B, P, D]), each image encoded once per process (and run, with the disk tier)."""
        model = self.model

        def encode(images):
            image, windows, patches = model.encode_image(images)
            return [image, *windows, patches]

        levels = self.context.features.cached(self._encoder_id(), batch, encode)
        return levels[0], levels[1:-1], levels[-1]

    def _placeholder(self, batch: ImageBatch) -> torch.Tensor:
        """anomalib's forward reads only its input's size (to resize the map): no pixels needed."""
        size = self.config["image_size"]
        return torch.empty(len(batch), 3, size, size, device=self.context.device)

    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        model = self.model
        text = self.text_embeddings(self.prompt_name(category))
        # setup() with no class name collects only the visual (reference) embeddings; the text
        # embeddings of this class were computed once and are put back in place
        model.class_name = None
        with _encoded(model, self._embeddings(normal)):
            model.setup(None, self._placeholder(normal))
        model._text_embeddings = text

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        with _encoded(self.model, self._embeddings(batch)) as model:
            output = model(self._placeholder(batch))
        return Prediction(output.pred_score.float().cpu().numpy().astype(np.float64), output.anomaly_map.float())

    def describe(self) -> dict:
        return {**self.describe_clip(self.model.clip, self._weights_sha256, 0), "scales": list(self.config["scales"])}
