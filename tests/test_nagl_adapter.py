import json

import pandas as pd
import pytest

from benchmark.cli import main
from conftest import write_experiment
from tests.contexts import run_context
from benchmark.run.checkpoints import fit_source
from benchmark.data.batches import training_data

NAGL_TINY = {"name": "nagl_tiny", "adapter": "nagl", "label": "NAGL tiny",
             "config": {"backbone": "lite0_imagenet", "input_size": 96, "proxies": 4,
                        "training": {"epochs": 2, "episodes_per_epoch": 8, "batch_size": 4, "learning_rate": 1e-3,
                                     "milestones": [1]}}}
ABLATIONS = [{"name": f"abl_{v}", "adapter": "nn_ablation", "label": f"({n}) {v}",
              "config": {"variant": v, "backbone": "lite0_imagenet", "input_size": 96}}
             for n, v in (("i", "normal"), ("ii", "abnormal"), ("iii", "normal+abnormal"))]


@pytest.fixture(scope="module")
def nagl_run(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("nagl")
    experiment = write_experiment(tmp / "e.yaml", synthetic_root, methods=ABLATIONS + [NAGL_TINY],
                                  settings=["N1+A1", "N2+A1"], seeds=[0, 1],
                                  tables={"ablation": {"targets": ["tiny_textures", "tiny_objects"], "mean": True}})
    results = tmp / "results"
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert main(["tables", "--experiment", str(experiment), "--results", str(results)]) == 0
    return experiment, results


def test_one_checkpoint_per_source_and_k_shared_by_the_seeds(nagl_run):
    _, results = nagl_run
    checkpoints = sorted((results / "checkpoints" / "nagl_tiny").rglob("model.pt"))
    assert len(checkpoints) == 2 * 2  # two sources x k in (1, 2)
    cells = [json.loads(p.read_text()) for p in (results / "runs").rglob("*.json") if "nagl_tiny" in str(p)]
    assert len(cells) == 2 * 2 * 2 and all(c["status"] == "done" for c in cells)
    by_key = {}
    for cell in cells:
        by_key.setdefault((cell["cell"]["source"], cell["cell"]["setting"]), set()).add(cell["checkpoint"])
    assert all(len(paths) == 1 for paths in by_key.values())  # seeds 0 and 1 share the model
    first = cells[0]
    assert first["method"]["checkpoint_policy"] == "last" and first["method"]["image_loss"] == "code"
    dim = 112  # Lite0 stride-16 stage
    assert first["method"]["parameters_trainable"] == 4 * (4 * dim * dim + 4 * dim + 2 * dim) + 4 * dim
    assert first["cell"]["source"] != "*" and "fit_source_seconds" in first["timings"]


def test_fit_source_is_idempotent(nagl_run):
    experiment, results = nagl_run
    checkpoints = {p: p.stat().st_mtime_ns for p in (results / "checkpoints").rglob("model.pt")}
    for cell in (results / "runs").rglob("*.json"):
        if "nagl_tiny" in str(cell):
            cell.unlink()  # force the cells to run again: training must not
    assert main(["run", "--experiment", str(experiment), "--results", str(results), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (results / "checkpoints").rglob("model.pt")} == checkpoints


def test_ablation_table_has_the_paper_shape(nagl_run):
    _, results = nagl_run
    table = pd.read_csv(results / "tables" / "tiny" / "ablation.csv")
    assert list(table.method) == ["(i) normal", "(ii) abnormal", "(iii) normal+abnormal", "NAGL tiny"] * 2
    assert "mean" in table.columns and table["mean"].between(0, 100).all()
    first = table.iloc[0]
    values = [first[f"{t}:{m}:mean"] for t in ("tiny_textures", "tiny_objects") for m in ("image_auroc", "pixel_auroc")]
    assert first["mean"] == pytest.approx(sum(values) / 4, abs=1e-3)
    tex = (results / "tables" / "tiny" / "ablation.tex").read_text()
    assert "Mean" in tex and "(iii) normal+abnormal" in tex


def test_ablation_i_with_an_abnormal_reference_equals_normal_nn_without(tmp_path, synthetic_root):
    """Under the clean protocol N^k and N^k+A^1 score the same queries, so (i) at N1+A1 must equal
    the normal-NN scorer at N1 exactly: the abnormal reference is really ignored."""
    methods = [ABLATIONS[0], {"name": "nn", "adapter": "normal_nn", "config": {"backbone": "lite0_imagenet", "input_size": 96}}]
    experiment = write_experiment(tmp_path / "e.yaml", synthetic_root, methods=methods, settings=["N1", "N1+A1"], seeds=[0],
                                  pairs=[["tiny_objects", "tiny_textures"]])
    assert main(["run", "--experiment", str(experiment), "--results", str(tmp_path / "r"), "--no-progress"]) == 0
    cells = {p.parent.parent.parent.name: json.loads(p.read_text()) for p in (tmp_path / "r" / "runs").rglob("*.json")}
    ablation = {k: v for k, v in cells["abl_normal"]["metrics"].items() if k != "coverage"}  # a cell with A^j adds coverage
    assert ablation == cells["nn"]["metrics"] and "coverage" in cells["abl_normal"]["metrics"]


def test_training_does_not_depend_on_what_ran_before_in_the_process(tmp_path, synthetic_root):
    """The model's initial weights come from the training seed, not from the global RNG state that
    earlier cells (a coreset draw, another model) left behind."""
    import torch

    from benchmark.data.mvtec import read_mvtec
    from benchmark.features.service import FeatureService
    from benchmark.data.settings import parse_setting
    from benchmark.features.weights import WeightStore
    from nagl.adapter import NAGLAdapter

    domain = training_data("objects", read_mvtec(synthetic_root / "objects"))
    weights = []
    for run, noise in enumerate((0, 12345)):
        torch.manual_seed(noise)
        torch.rand(noise % 97 + 1)  # earlier work consumed random numbers
        store = WeightStore(tmp_path / "w")
        context = run_context(torch.device("cpu"), store, FeatureService(store, torch.device("cpu")), tmp_path)
        adapter = NAGLAdapter(NAGL_TINY["config"], context)
        path = fit_source(adapter, domain, tmp_path / f"run{run}", parse_setting("N1+A1"))
        weights.append(torch.load(path, weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_target_selection_scores_as_the_official_validation():
    """The official validation (train.py run() + utils/metrics.py FewShotMetric), rebuilt with
    scikit-learn and scipy: top-20 mean image score; the patch score bilinearly upsampled to the
    input and blurred with sigma 4; AUROC per category, averaged over categories; image + pixel."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter
    from sklearn.metrics import roc_auc_score

    from nagl.selection import target_selector
    from nagl.train import sample_episode
    from test_nagl import tiny_bank

    class ScoreFromFeatures(torch.nn.Module):
        def forward(self, query, normal, grid, abnormal, abnormal_mask):
            return {"score": torch.sigmoid(query[..., :3].sum(-1))}

    bank = tiny_bank(n_per_category=12)
    value = target_selector(bank, 1, seed=111, count=60, device=torch.device("cpu"))(ScoreFromFeatures(), 7)

    rng = np.random.default_rng([111, 7])  # fresh episodes per epoch, seeded by (training seed, epoch)
    episodes = [sample_episode(rng, bank, 1, bank.usable_categories(1, "clean", 1), "clean", 1) for _ in range(60)]
    image, pixel = [], []
    for category in sorted(set(bank.categories)):
        chosen = [e for e in episodes if bank.categories[e.query] == category]
        score = torch.sigmoid(bank.features[[e.query for e in chosen]][..., :3].sum(-1))
        top20 = score.topk(20, dim=1).values.mean(1).numpy()
        maps = F.interpolate(score.reshape(-1, 1, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)[:, 0].numpy()
        maps = np.stack([gaussian_filter(m, 4.0) for m in maps])
        masks = bank.pixel_masks[[e.query for e in chosen]].numpy()
        image.append(roc_auc_score([e.label for e in chosen], top20))
        pixel.append(roc_auc_score(masks.ravel(), maps.ravel()))
    assert value == pytest.approx(np.mean(image) + np.mean(pixel), abs=1e-9)
    other_epoch = target_selector(bank, 1, seed=111, count=60, device=torch.device("cpu"))(ScoreFromFeatures(), 8)
    assert other_epoch != pytest.approx(value)  # each epoch draws fresh episodes
