"""InCTRL (Zhu & Pang, CVPR 2024) behind the adapter: frozen open_clip ViT-B-16-plus-240 with the
LAION-400M epoch-32 weights, 240 px (resize + centre crop), learned heads in baselines/inctrl_model.py.

Training on the source (the code's recipe): queries from normal (train/good + test/good) and
anomalous (test defects) images in balanced batches of 16, each with k normal references of its
category; 10 epochs x 100 steps, AdamW 1e-3, seed 10, focal loss on the final and the image-residual
scores; one model per k. Image scores only. Differences from the code, each a config key:
  - a query is never one of its own references (the code may draw it);
  - `training.focal_input: code` applies the focal loss's BCE-with-logits to the sigmoid outputs,
    as the code does; `probabilities` uses plain BCE on them;
  - `batch_layout: per-image` (default): each query meets its own tokens, so batch 1 and batch 8
    give the same scores; `code` reproduces the official reshape that mixes a batch's images, in
    training (batches of 16) and at test time (where the code therefore uses batch 1);
  - `class_names: underscores` (default) prompts with the folder name, '_' as spaces, as the code;
    `readable` uses configs/class_names.yaml;
  - InCTRL's own prompt list: the WinCLIP states (7 normal, 4 anomalous) x 22 templates.
Checked against the official model in tests/conformance/test_inctrl_official.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baselines.clip_adapter import ClipAdapter
from baselines.clip_models import BlockTokens, load_clip
from baselines.inctrl_model import BATCH_LAYOUTS, InCTRLHeads, batch_layout, patch_residual_map, text_prior
from benchmark.api import (NORMAL, GadbenchError, ImageBatch, Prediction, ReferenceSet, TrainedAdapter, TrainingData,
                           resumable_epochs)

NORMAL_STATES = ["{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage"]
ANOMALOUS_STATES = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"]
TEMPLATES = ["a cropped photo of the {}.", "a cropped photo of a {}.", "a close-up photo of a {}.",
             "a close-up photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
             "a dark photo of a {}.", "a dark photo of the {}.", "a jpeg corrupted photo of a {}.",
             "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
             "a photo of the {}.", "a photo of a {}.", "a photo of a small {}.", "a photo of the small {}.",
             "a photo of a large {}.", "a photo of the large {}.", "a photo of a {} for visual inspection.",
             "a photo of the {} for visual inspection.", "a photo of a {} for anomaly detection.",
             "a photo of the {} for anomaly detection."]
TRAINING_KEYS = {"epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed", "focal_input"}


def prompt_ensemble(name: str) -> tuple[list[str], list[str]]:
    normal = [t.format(s.format(name)) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(s.format(name)) for s in ANOMALOUS_STATES for t in TEMPLATES]
    return normal, anomalous


def focal_loss(scores: torch.Tensor, labels: torch.Tensor, focal_input: str, gamma: float = 2.0) -> torch.Tensor:
    """The code's BinaryFocalLoss(alpha=1, gamma=2, logits=True), fed the heads' sigmoid outputs."""
    if focal_input == "code":
        bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    else:
        bce = F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), labels, reduction="none")
    return ((1 - torch.exp(-bce)) ** gamma * bce).mean()


class InCTRLAdapter(TrainedAdapter, ClipAdapter):
    name = "inctrl"
    weights_name = "inctrl_clip"
    training_keys = TRAINING_KEYS
    supports = (NORMAL,)
    model_per_k = True
    pixel_level = False
    default_config = {
        "clip_model": "ViT-B-16-plus-240",
        "clip_model_config": None,
        "image_size": 240,
        "blocks": [7, 9, 11],
        "weights": {
            "file": "vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
            "sha256": None,
            "sha256_prefix": "699c4b84",
            "url": "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e32-699c4b84.pt",
        },
        "training": {"epochs": 10, "steps_per_epoch": 100, "batch_size": 16, "learning_rate": 1e-3, "seed": 10,
                     "focal_input": "code"},
        "batch_layout": "per-image",  # code: the official reshape that mixes a batch's images (inctrl_model.py)
        "class_names": "underscores",  # the code's type.replace('_', ' '); readable: configs/class_names.yaml
        "feature_cache_images": 2048,  # frozen CLIP outputs kept in memory during training
        "allow_random_weights": False,
    }

    rehearsal_config = {"training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}}

    def __init__(self, config, context):
        super().__init__(config, context)
        if self.config["training"]["focal_input"] not in ("code", "probabilities"):
            raise GadbenchError("inctrl: training.focal_input must be 'code' or 'probabilities'")
        if self.config["batch_layout"] not in BATCH_LAYOUTS:
            raise GadbenchError(f"inctrl: batch_layout must be one of {BATCH_LAYOUTS}, not {self.config['batch_layout']!r}")
        self._clip, self._sha256, self._text, self._encoded = None, None, {}, {}
        self.heads: InCTRLHeads | None = None
        self.training_seed = self.config["training"]["seed"]

    # ------------------------------------------------------------------ frozen CLIP
    @property
    def clip(self):
        """The frozen CLIP, built once per process for this architecture and weights file and shared
        by every cell, with the text features computed so far."""
        if self._clip is None:
            weight = None if self.config["allow_random_weights"] else self.required_weights()[0]

            def build():
                model, sha256 = load_clip(self.config["clip_model"], weight, self.context.weights, self.config["clip_model_config"])
                return model.to(self.context.device), sha256, {}

            self._clip, self._sha256, self._text = self.shared_model(build)
        return self._clip

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image embeddings [B, D] and, per chosen block, patch tokens without CLS [B, P, C]."""
        recorder = BlockTokens(self.clip.visual, self.config["blocks"])
        try:
            embedding = self.clip.encode_image(images.to(self.context.device))
            if isinstance(embedding, tuple):  # output_tokens models return (pooled, tokens)
                embedding = embedding[0]
            blocks = [tokens[:, 1:] for tokens in recorder.take(len(images))]
        finally:
            recorder.remove()
        return embedding.float(), [b.float() for b in blocks]

    @torch.no_grad()
    def text_features(self, category: str) -> torch.Tensor:
        name = self.prompt_name(category)
        self.clip  # the text features are shared with the model
        if name not in self._text:
            import open_clip

            tokenizer = open_clip.get_tokenizer(self.config["clip_model"])
            means = []
            for prompts in prompt_ensemble(name):
                encoded = F.normalize(self.clip.encode_text(tokenizer(prompts).to(self.context.device)).float(), dim=-1)
                means.append(F.normalize(encoded.mean(dim=0), dim=-1))
            self._text[name] = torch.stack(means)
        return self._text[name]

    # ------------------------------------------------------------------ training
    def _encoded_image(self, path: str, source: TrainingData):
        if path not in self._encoded:
            image = self.preprocessing().image(source.image(path))[None]
            embedding, blocks = self.encode(image)
            if len(self._encoded) >= self.config["feature_cache_images"]:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[path] = (embedding[0].cpu(), [b[0].cpu() for b in blocks])
        return self._encoded[path]

    def _scores(self, heads: InCTRLHeads, query_paths: list[str], reference_paths: list[list[str]], categories: list[str],
                source: TrainingData):
        """Training forward on cached CLIP outputs; reference_paths[i] holds query i's k references."""
        queries = [self._encoded_image(p, source) for p in query_paths]
        shot = len(reference_paths[0])
        # shot-major, as the code's `inputs[1:]`: reference s of query i at s * B + i
        references = [self._encoded_image(refs[s], source) for s in range(shot) for refs in reference_paths]
        return self._heads_on(heads, torch.stack([q[0] for q in queries]),
                              [torch.stack([q[1][b] for q in queries]) for b in range(len(self.config["blocks"]))],
                              torch.stack([r[0] for r in references]),
                              [torch.stack([r[1][b] for r in references]) for b in range(len(self.config["blocks"]))],
                              shot, categories)

    def _heads_on(self, heads, embeddings, blocks, reference_embeddings, reference_blocks, shot, categories):
        """embeddings [B, D] and per block [B, P, C] of the queries; the references' likewise,
        [shot * B, ...] shot-major. The batch layout decides which tokens each query is compared with."""
        device = self.context.device
        queries, references, reference_embeddings = batch_layout(
            [b.to(device) for b in blocks], [b.to(device) for b in reference_blocks], reference_embeddings.to(device),
            shot, self.config["batch_layout"])
        embeddings = embeddings.to(device)
        prior = torch.stack([text_prior(e[None], self.text_features(c))[0] for e, c in zip(embeddings, categories)])
        return heads(embeddings, reference_embeddings, patch_residual_map(queries, references), prior)

    # ------------------------------------------------------------------ training (api.TrainedAdapter)
    def checkpoint_identity(self, setting) -> dict:
        self.clip  # the weights' sha256 is known once the model is built
        return {"config": self.config, "k": setting.k_normal, "weights": self._sha256}

    def train(self, source: TrainingData, setting, target: TrainingData | None, folder: Path, digest: str) -> dict:
        k, training, table = setting.k_normal, self.config["training"], source.table
        normals = table[table.label == 0]
        anomalies = table[(table.split == "test") & (table.label == 1)]
        pools = {c: list(rows.path) for c, rows in normals.groupby("category")}
        usable_anomalies = anomalies[anomalies.category.map(lambda c: len(pools.get(c, [])) >= k)]
        usable_normals = normals[normals.category.map(lambda c: len(pools.get(c, [])) > k)]
        if usable_anomalies.empty or usable_normals.empty:
            raise GadbenchError(f"inctrl: source {source.name!r} has no category with {k + 1} normal images and defects")
        torch.manual_seed(training["seed"])
        rng = np.random.default_rng(training["seed"])
        heads = self._new_heads().to(self.context.device)
        optimizer = torch.optim.AdamW(heads.parameters(), lr=training["learning_rate"], betas=(0.9, 0.999))

        def run_epoch(epoch: int) -> float:
            heads.train()
            losses = []
            for _ in range(training["steps_per_epoch"]):
                half = training["batch_size"] // 2
                picks = [usable_normals.iloc[i] for i in rng.integers(len(usable_normals), size=half)]
                picks += [usable_anomalies.iloc[i] for i in rng.integers(len(usable_anomalies), size=training["batch_size"] - half)]
                references = []
                for row in picks:
                    pool = [p for p in pools[row.category] if p != row.path]  # never the query itself
                    references.append([pool[i] for i in rng.choice(len(pool), size=k, replace=False)])
                labels = torch.tensor([float(r.label) for r in picks], device=self.context.device)
                out = self._scores(heads, [r.path for r in picks], references, [r.category for r in picks], source)
                loss = focal_loss(out["final"], labels, training["focal_input"]) + \
                    focal_loss(out["image_residual_score"], labels, training["focal_input"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        history, _ = resumable_epochs(folder, digest, training["epochs"], {"heads": heads, "optimizer": optimizer}, rng, run_epoch)
        return {"state_dict": heads.state_dict(), "history": history}

    def load(self, state: dict) -> None:
        self.heads = self._new_heads().to(self.context.device)
        self.heads.load_state_dict(state["state_dict"])
        self.heads.eval()

    def _new_heads(self) -> InCTRLHeads:
        visual = self.clip.visual
        grid = visual.grid_size if isinstance(visual.grid_size, tuple) else (visual.grid_size, visual.grid_size)
        return InCTRLHeads(self.clip.visual.output_dim, grid[0] * grid[1])

    # ------------------------------------------------------------------ test
    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        self.reference_embeddings, self.reference_blocks = self.encode(normal.images)
        self.category = category

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        if self.heads is None:
            raise GadbenchError("inctrl: predict before training; the harness trains (or loads) the heads first")
        embeddings, blocks = self.encode(batch.images)
        shot, size = len(self.reference_embeddings), len(batch)
        # every query of a batch shares the category's references (shot-major, as the code's test path)
        out = self._heads_on(self.heads, embeddings, blocks, self.reference_embeddings.repeat_interleave(size, dim=0),
                             [b.repeat_interleave(size, dim=0) for b in self.reference_blocks], shot, [self.category] * size)
        return Prediction(out["final"].cpu().numpy().astype(np.float64), None)

    def describe(self) -> dict:
        trainable = sum(p.numel() for p in (self.heads or self._new_heads()).parameters())
        return {**self.describe_clip(self.clip, self._sha256, trainable), "pixel_level": False, **self.training_summary(),
                "focal_input": self.config["training"]["focal_input"], "batch_layout": self.config["batch_layout"]}
