import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skimage_data

from benchmark.config import backbone_entry
from benchmark.errors import GadbenchError, MissingWeights
from benchmark.features.backbones import build_backbone
from benchmark.features.weights import WeightFile, WeightStore, lukemelas_to_timm_efficientnet
from conftest import RunsACommand

LITE0 = backbone_entry("lite0_imagenet")


def test_every_lite0_key_maps_into_timm_with_strict_loading():
    store = WeightStore()
    state, sha256 = store.load_state_dict(WeightFile.from_config("lite0_imagenet", LITE0["weights"]))
    assert sha256 == LITE0["weights"]["sha256"]
    model = timm.create_model(LITE0["timm_name"], pretrained=False)
    mapped = lukemelas_to_timm_efficientnet(state, [len(s) for s in model.blocks])
    assert len(mapped) == len(state)
    model.load_state_dict(mapped, strict=True)  # raises on any missing or unexpected key


@pytest.mark.parametrize("image, classes", [("chelsea", range(281, 286)), ("coffee", [967, 968])])
def test_lite0_classifies_real_images_sensibly(image, classes):
    store = WeightStore()
    state, _ = store.load_state_dict(WeightFile.from_config("lite0_imagenet", LITE0["weights"]))
    model = timm.create_model(LITE0["timm_name"], pretrained=False).eval()
    model.load_state_dict(lukemelas_to_timm_efficientnet(state, [len(s) for s in model.blocks]), strict=True)
    pil = Image.fromarray(getattr(skimage_data, image)()).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(LITE0["mean"]).view(3, 1, 1)) / torch.tensor(LITE0["std"]).view(3, 1, 1)
    with torch.no_grad():
        top = model(x[None]).argmax().item()
    assert top in classes  # chelsea: a cat (281-285); coffee: espresso / cup


def test_lite0_feature_map_is_stride_16():
    handle = build_backbone("lite0_imagenet", WeightStore(), input_size=448)
    with torch.no_grad():
        features = handle.module(torch.zeros(1, 3, 448, 448))[0]
    assert features.shape == (1, 112, 28, 28)
    assert handle.weights_sha256 == LITE0["weights"]["sha256"]


def test_missing_weights_name_the_file_and_where_to_get_it(tmp_path):
    store = WeightStore(tmp_path)
    weight = WeightFile("dinov2_vits14", "dinov2_vits14_pretrain.pth", url="https://example.invalid/w.pth")
    with pytest.raises(MissingWeights, match=r"dinov2_vits14_pretrain.pth .* not found at .*; download it from https://example.invalid/w.pth .*--allow-download"):
        store.resolve(weight)


def test_wrong_sha256_is_refused(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"not the real file")
    with pytest.raises(GadbenchError, match="does not match the expected"):
        WeightStore(tmp_path).resolve(WeightFile("x", "w.pth", sha256="0" * 64))


def test_weights_that_are_not_a_plain_tensor_file_are_refused_in_one_line(tmp_path):
    torch.save({"w": torch.zeros(1), "object": RunsACommand(tmp_path / "ran")}, tmp_path / "evil.pth")
    with pytest.raises(GadbenchError) as refused:
        WeightStore(tmp_path).load_state_dict(WeightFile("x", "evil.pth", url="https://example.org/evil.pth"))
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'evil.pth'}: not a plain tensor file, it would build Python objects")
    assert "download it again from https://example.org/evil.pth" in message
    assert "\n" not in message and "weights_only=False" not in message
    assert not (tmp_path / "ran").exists()


def test_vit_backbone_gives_a_patch_grid_without_prefix_tokens():
    handle = build_backbone("dinov2_vits14", WeightStore(), input_size=448, allow_random=True)
    with torch.no_grad():
        features = handle.module(torch.zeros(1, 3, 448, 448))[0]
    assert features.shape == (1, 384, 32, 32)
    assert handle.describe()["random_weights"] is True


def test_a_dinov2_release_style_checkpoint_loads_into_the_448_model(tmp_path):
    """The official dinov2_vits14_pretrain.pth has a 37x37 (518 px) position grid and a mask token;
    timm's filter resamples the grid to 32x32 (448 px) and drops what the model lacks."""
    release = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0).state_dict()
    release["mask_token"] = torch.zeros(1, 384)
    assert release["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    torch.save(release, tmp_path / "dinov2_vits14_pretrain.pth")
    handle = build_backbone("dinov2_vits14", WeightStore(tmp_path), input_size=448)
    with torch.no_grad():
        features = handle.module(torch.zeros(1, 3, 448, 448))[0]
    assert features.shape == (1, 384, 32, 32)
    assert torch.equal(handle.module.model.blocks[3].attn.qkv.weight, release["blocks.3.attn.qkv.weight"])


def test_an_unpinned_file_is_pinned_on_first_use_and_a_swap_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pth")
    weight = WeightFile("unpinned", "model.pth")  # no sha256 in the catalogue (DINOv2, timm safetensors)
    store = WeightStore(tmp_path)
    _, first = store.load_state_dict(weight)
    assert (tmp_path / "SHA256SUMS").read_text() == f"{first}  model.pth\n"
    store.load_state_dict(weight)  # the same file again: fine
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pth")
    with pytest.raises(GadbenchError, match=r"differs from .* recorded on first use in .*SHA256SUMS; restore the original file"):
        store.load_state_dict(weight)
    assert WeightStore(tmp_path).status(weight)["valid"] is False


def test_random_weights_do_not_depend_on_what_ran_before():
    """Features of random-weight backbones are cached under the key 'random' and shared by cells
    and processes: the weights must be the same whatever the RNG state at construction."""
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(build_backbone("lite0_imagenet", WeightStore(), 64, allow_random=True).module.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    build_backbone("lite0_imagenet", WeightStore(), 64, allow_random=True)
    assert torch.equal(torch.rand(1), expected)


def test_a_missing_clip_weights_file_is_reported_before_the_model_is_built(tmp_path, monkeypatch):
    import open_clip

    from baselines.clip_models import load_clip

    def build(*args, **kwargs):  # seconds of random initialisation for ViT-B-16+, in every skipped cell
        raise AssertionError("the model was built before the weights file was looked for")

    monkeypatch.setattr(open_clip, "create_model", build)
    weight = WeightFile.from_config("inctrl_clip", {"file": "absent.pt", "url": "https://example.org/absent.pt"})
    with pytest.raises(MissingWeights, match="absent.pt"):
        load_clip("ViT-B-16-plus-240", weight, WeightStore(tmp_path))
