"""Vision towers chosen by their config (`llava.model.multimodal_encoder.builder`), and what each
tower returns: CLIP drops its CLS for `patch`, SigLIP (no CLS) keeps every token and refuses `cls_patch`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llava.model.multimodal_encoder.builder import (
    VISION_TOWERS,
    build_vision_tower,
    check_vision_tower,
    vision_tower_type,
)
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_encoder.siglip_encoder import SiglipVisionTower
from llava.tiny import build_tiny_clip, build_tiny_siglip


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    return {"clip": build_tiny_clip(root / "clip"), "siglip": build_tiny_siglip(root / "siglip")}


def tower_args(path, layer: int = -2, feature: str = "patch") -> SimpleNamespace:
    return SimpleNamespace(mm_vision_tower=str(path), mm_vision_select_layer=layer,
                           mm_vision_select_feature=feature)


def vision_only_folder(full: Path, out: Path, model_class) -> Path:
    """The vision half of a full two-tower folder saved alone (a *_vision_model config) with its processor."""
    model_class.from_pretrained(str(full)).save_pretrained(str(out))
    shutil.copy(full / "preprocessor_config.json", out / "preprocessor_config.json")
    return out


def test_the_registry_holds_clip_and_siglip_by_their_vision_config_model_type():
    assert VISION_TOWERS == {"clip_vision_model": CLIPVisionTower, "siglip_vision_model": SiglipVisionTower}


@pytest.mark.parametrize("kind,expected", [("clip", CLIPVisionTower), ("siglip", SiglipVisionTower)])
def test_a_full_two_tower_folder_gets_the_wrapper_of_its_vision_config(towers, kind, expected):
    assert json.loads((towers[kind] / "config.json").read_text())["model_type"] == kind
    tower = build_vision_tower(tower_args(towers[kind]), delay_load=True)
    assert type(tower) is expected and not tower.is_loaded


def test_a_vision_only_siglip_folder_named_clip_is_still_a_siglip_tower(towers, tmp_path):
    from transformers import SiglipVisionModel

    folder = vision_only_folder(towers["siglip"], tmp_path / "clip-vit-large-patch14-336", SiglipVisionModel)
    assert vision_tower_type(folder) == "siglip_vision_model"
    tower = build_vision_tower(tower_args(folder))
    assert type(tower) is SiglipVisionTower and tower.is_loaded
    assert tower.vision_tower_name == str(folder)


def test_a_model_type_without_a_wrapper_is_refused_listing_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    expected = (f"vision tower (mm_vision_tower) {tmp_path}: model_type 'llama' ({tmp_path / 'config.json'}) "
                "is not a supported vision tower; supported: clip_vision_model, siglip_vision_model "
                "(or a full clip, siglip model folder holding one)")
    with pytest.raises(ValueError) as caught:
        build_vision_tower(tower_args(tmp_path), delay_load=True)
    assert str(caught.value) == expected


def test_a_folder_without_config_json_is_named(tmp_path):
    expected = f"^vision tower \\(mm_vision_tower\\) {tmp_path}: no config.json"
    with pytest.raises(FileNotFoundError, match=expected):
        build_vision_tower(tower_args(tmp_path), delay_load=True)


def test_a_hub_id_is_read_from_its_snapshot_and_kept_as_the_name(towers, tmp_path, monkeypatch):
    from tests.test_hub_ids import plant

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = plant(cache, "tiny-org/vit-tiny", towers["siglip"], "a" * 40)
    args = SimpleNamespace(mm_vision_tower="tiny-org/vit-tiny", mm_vision_select_layer=-2)
    tower = build_vision_tower(args, delay_load=True)
    assert type(tower) is SiglipVisionTower
    assert (tower.vision_tower_name, Path(tower.vision_tower_path)) == ("tiny-org/vit-tiny", snapshot)


def reference_hidden_states(model_class, folder: Path, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model = model_class.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(images, output_hidden_states=True).hidden_states


def test_siglip_patch_features_are_every_token_of_the_penultimate_layer(towers):
    from transformers import SiglipVisionModel

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tower = build_vision_tower(tower_args(towers["siglip"]))
    features = tower(images)
    assert features.shape == (2, 16, 32) and tower.num_tokens == tower.num_patches == 16
    expected = reference_hidden_states(SiglipVisionModel, towers["siglip"], images)[-2]
    torch.testing.assert_close(features, expected)


def test_siglip_last_layer_is_before_post_layernorm_and_the_head_is_not_built(towers):
    from transformers import SiglipVisionModel

    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    tower = build_vision_tower(tower_args(towers["siglip"], layer=-1))
    expected = reference_hidden_states(SiglipVisionModel, towers["siglip"], images)[-1]
    torch.testing.assert_close(tower(images), expected)
    assert not hasattr(tower.vision_tower, "head") and tower.config.vision_use_head is False


def test_clip_patch_features_drop_the_cls_token_and_cls_patch_keeps_it_first(towers):
    from transformers import CLIPVisionModel

    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    hidden = reference_hidden_states(CLIPVisionModel, towers["clip"], images)[-2]
    patch = build_vision_tower(tower_args(towers["clip"]))
    cls_patch = build_vision_tower(tower_args(towers["clip"], feature="cls_patch"))
    torch.testing.assert_close(patch(images), hidden[:, 1:])
    torch.testing.assert_close(cls_patch(images), hidden)
    assert (patch.num_tokens, cls_patch.num_tokens) == (16, 17)


def test_siglip_refuses_cls_patch_naming_the_tower_before_loading_weights(towers):
    expected = (f"mm_vision_select_feature='cls_patch' is not supported by the siglip_vision_model tower "
                f"{towers['siglip']}; use one of ('patch',)")
    with pytest.raises(ValueError) as caught:
        build_vision_tower(tower_args(towers["siglip"], feature="cls_patch"), delay_load=True)
    assert str(caught.value) == expected


def test_a_processor_whose_output_is_not_the_towers_image_size_is_refused_at_load(towers, tmp_path):
    from transformers import SiglipImageProcessor

    folder = shutil.copytree(towers["siglip"], tmp_path / "siglip")
    SiglipImageProcessor(size={"height": 48, "width": 48}).save_pretrained(str(folder))
    tower = build_vision_tower(tower_args(folder), delay_load=True)
    expected = r"image processor makes \(48, 48\) \(height, width\) inputs, the tower takes 64x64"
    with pytest.raises(ValueError, match=expected):
        tower.load_model()


def test_a_delayed_tower_knows_its_grid_and_width_from_the_config_alone(towers):
    tower = build_vision_tower(tower_args(towers["siglip"]), delay_load=True)
    assert (tower.hidden_size, tower.num_patches_per_side, tower.config.vision_use_head) == (32, 4, False)
    assert not hasattr(tower, "vision_tower")


def test_the_checks_before_loading_read_only_the_towers_config(towers, tmp_path):
    config_only = tmp_path / "siglip-config-only"
    config_only.mkdir()
    shutil.copy(towers["siglip"] / "config.json", config_only / "config.json")
    assert check_vision_tower(tower_args(config_only)) is SiglipVisionTower
    with pytest.raises(ValueError, match="^mm_vision_select_feature='cls_patch' is not supported by the "
                                         "siglip_vision_model tower"):
        check_vision_tower(tower_args(config_only, feature="cls_patch"))
