"""InCTRL (Zhu & Pang, CVPR 2024) behind the adapter: frozen open_clip ViT-B-16-plus-240 with the
LAION-400M epoch-32 weights, 240 px (resize + centre crop), learned heads in baselines/inctrl_model.py.

Training on the source (the code's recipe): queries from normal (train/good + test/good) and
anomalous (test defects) images in balanced batches of 16, each with k normal references of its
category; 10 epochs x 100 steps, AdamW 1e-3, seed 10, focal loss on the final and the image-residual
scores; one model per k. Image scores only. Differences from the code, each a config key:
  - a query is never one of its own references (the code may draw it);
  - `training.focal_input: code` applies the focal loss's BCE-with-logits to the sigmoid outputs,
    as the code does; `probabilities` uses plain BCE on them;
  - no batch-mixing reshape (see inctrl_model.py): batch 1 and batch 8 give the same scores;
  - InCTRL's own prompt list: the WinCLIP states (7 normal, 4 anomalous) x 22 templates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baselines.clip_models import BlockTokens, load_clip
from baselines.inctrl_model import InCTRLHeads, patch_residual_map, text_prior
from baselines.winclip import OPENAI_MEAN, OPENAI_STD
from benchmark.adapter import NORMAL, Adapter, Domain, ImageBatch, Prediction, ReferenceSet
from benchmark.class_names import class_name
from benchmark.config import config_hash
from benchmark.errors import GadbenchError
from benchmark.images import file_sha256, load_image
from benchmark.preprocessing import Preprocessing
from benchmark.training import load_checkpoint, resumable_epochs, save_atomic
from benchmark.weights import RANDOM, WeightFile

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


class InCTRLAdapter(Adapter):
    name = "inctrl"
    supports = (NORMAL,)
    trains_on_source = True
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
        "feature_cache_images": 2048,  # frozen CLIP outputs kept in memory during training
        "allow_random_weights": False,
    }

    def __init__(self, config, context):
        super().__init__(config, context)
        self.config["training"] = self.merged_training_config(TRAINING_KEYS)
        if self.config["training"]["focal_input"] not in ("code", "probabilities"):
            raise GadbenchError("inctrl: training.focal_input must be 'code' or 'probabilities'")
        self._clip, self._sha256, self._text, self._encoded = None, None, {}, {}
        self.heads: InCTRLHeads | None = None

    def required_weights(self) -> list[WeightFile]:
        return [] if self.config["allow_random_weights"] else [WeightFile.from_config("inctrl_clip", self.config["weights"])]

    def preprocessing(self) -> Preprocessing:
        size = self.config["image_size"]
        return Preprocessing(size=size, resize="shorter", resize_to=size, interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD)

    # ------------------------------------------------------------------ frozen CLIP
    @property
    def clip(self):
        if self._clip is None:
            weight = None if self.config["allow_random_weights"] else self.required_weights()[0]
            self._clip, self._sha256 = load_clip(self.config["clip_model"], weight, self.context.weights,
                                                 self.config["clip_model_config"])
            self._clip.to(self.context.device)
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
        name = class_name(category)
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
    def _encoded_image(self, path: str):
        if path not in self._encoded:
            image = self.preprocessing().image(load_image(path))[None]
            embedding, blocks = self.encode(image)
            if len(self._encoded) >= self.config["feature_cache_images"]:
                self._encoded.pop(next(iter(self._encoded)))
            self._encoded[path] = (embedding[0].cpu(), [b[0].cpu() for b in blocks])
        return self._encoded[path]

    def _scores(self, heads: InCTRLHeads, query_paths: list[str], reference_paths: list[list[str]], categories: list[str]):
        queries = [self._encoded_image(p) for p in query_paths]
        embeddings = torch.stack([q[0] for q in queries]).to(self.context.device)
        maps, reference_embeddings = [], []
        for query, refs in zip(queries, reference_paths):
            encoded = [self._encoded_image(p) for p in refs]
            reference_embeddings.append(torch.stack([e[0] for e in encoded]))
            reference_blocks = [torch.cat([e[1][b] for e in encoded]).to(self.context.device) for b in range(len(query[1]))]
            maps.append(patch_residual_map([blk[None].to(self.context.device) for blk in query[1]], reference_blocks)[0])
        prior = torch.stack([text_prior(e[None], self.text_features(c))[0] for e, c in zip(embeddings, categories)])
        return heads(embeddings, torch.stack(reference_embeddings).to(self.context.device), torch.stack(maps), prior)

    def fit_source(self, source: Domain, seed: int, workdir: Path, setting=None, target: Domain | None = None) -> Path:
        k, training = setting.k_normal, self.config["training"]
        table = source.table
        normals = table[table.label == 0]
        anomalies = table[(table.split == "test") & (table.label == 1)]
        identity = {"config": self.config, "k": k, "images": sorted(file_sha256(p) for p in table.path)}
        digest = config_hash(identity)
        folder = Path(workdir) / f"k{k}-{digest}"
        final = folder / "model.pt"
        if not final.exists():
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
                    out = self._scores(heads, [r.path for r in picks], references, [r.category for r in picks])
                    loss = focal_loss(out["final"], labels, training["focal_input"]) + \
                        focal_loss(out["image_residual_score"], labels, training["focal_input"])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                return float(np.mean(losses))

            history = resumable_epochs(folder, digest, training["epochs"], {"heads": heads, "optimizer": optimizer}, rng, run_epoch)
            save_atomic({"config_hash": digest, "state_dict": heads.state_dict(), "history": history}, final)
        state = load_checkpoint(final, digest)
        self.heads = self._new_heads().to(self.context.device)
        self.heads.load_state_dict(state["state_dict"])
        self.heads.eval()
        self.training_history = state["history"]
        return final

    def _new_heads(self) -> InCTRLHeads:
        visual = self.clip.visual
        grid = visual.grid_size if isinstance(visual.grid_size, tuple) else (visual.grid_size, visual.grid_size)
        return InCTRLHeads(self.clip.visual.output_dim, grid[0] * grid[1])

    # ------------------------------------------------------------------ test
    @torch.no_grad()
    def set_references(self, category: str, normal: ReferenceSet, abnormal: ReferenceSet | None) -> None:
        embeddings, blocks = self.encode(normal.images)
        self.reference_embeddings = embeddings
        self.reference_blocks = [b.reshape(-1, b.shape[-1]) for b in blocks]
        self.prompts = self.text_features(category)

    @torch.no_grad()
    def predict(self, batch: ImageBatch) -> Prediction:
        if self.heads is None:
            raise GadbenchError("inctrl: predict before fit_source; the runner trains (or loads) the heads first")
        embeddings, blocks = self.encode(batch.images)
        residual_map = patch_residual_map(blocks, self.reference_blocks)
        out = self.heads(embeddings, self.reference_embeddings, residual_map, text_prior(embeddings, self.prompts))
        return Prediction(out["final"].cpu().numpy().astype(np.float64), None)

    def describe(self) -> dict:
        clip_parameters = sum(p.numel() for p in self.clip.parameters())
        heads = self.heads or self._new_heads()
        trainable = sum(p.numel() for p in heads.parameters())
        history = getattr(self, "training_history", [])
        return {"name": self.name, "backbone": self.config["clip_model"], "weights_sha256": self._sha256,
                "random_weights": self._sha256 == RANDOM, "parameters_total": clip_parameters + trainable,
                "parameters_trainable": trainable, "pixel_level": False,
                "training_seconds": sum(h["seconds"] for h in history), "training_epochs": len(history),
                "focal_input": self.config["training"]["focal_input"], "preprocessing": self.preprocessing().describe()}
