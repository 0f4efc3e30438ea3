"""Specification of the LLM-family registry (`llava.model.language_model.families`) and what rests on it:
names and Auto* registration, the generic LLaVA class equal to each family's own, config.json's
legacy RoPE keys, the family read from the config (never a folder name), the loader refusing a
base of another family or weights it would drop, LoRA targets, and Qwen2's q/k/v biases.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from family_lms import FAMILY_VARIANT, FIXTURES, build_variant, stage1_flags

from llava.model.language_model.families import (
    LLM_FAMILIES,
    UnsupportedFamilyError,
    family_of_model_type,
)

# family: (our model_type, causal LM class, config class, decoder class), the names checkpoints record
EXPECTED_NAMES = {
    "llama": ("llava_llama", "LlavaLlamaForCausalLM", "LlavaConfig", "LlavaLlamaModel"),
    "mistral": ("llava_mistral", "LlavaMistralForCausalLM", "LlavaMistralConfig", "LlavaMistralModel"),
    "qwen2": ("llava_qwen", "LlavaQwenForCausalLM", "LlavaQwenConfig", "LlavaQwenModel"),
    "qwen3": ("llava_qwen3", "LlavaQwen3ForCausalLM", "LlavaQwen3Config", "LlavaQwen3Model"),
    "gemma": ("llava_gemma", "LlavaGemmaForCausalLM", "LlavaGemmaConfig", "LlavaGemmaModel"),
    "gemma2": ("llava_gemma2", "LlavaGemma2ForCausalLM", "LlavaGemma2Config", "LlavaGemma2Model"),
    "phi3": ("llava_phi3", "LlavaPhi3ForCausalLM", "LlavaPhi3Config", "LlavaPhi3Model"),
}
STANDARD_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def lms(tmp_path_factory) -> dict[str, Path]:
    """One tiny base LM folder per family."""
    root = tmp_path_factory.mktemp("family-lms")
    return {family: build_variant(root, variant) for family, variant in FAMILY_VARIANT.items()}


def text_ids(folder: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return tokenizer("a red box and a blue box", return_tensors="pt").input_ids


def test_the_registry_holds_exactly_the_supported_families():
    assert list(LLM_FAMILIES) == list(EXPECTED_NAMES)


@pytest.mark.parametrize("family", EXPECTED_NAMES)
def test_each_family_has_its_checkpoint_names_registered_with_the_auto_classes(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    entry = LLM_FAMILIES[family]
    model_type, lm_name, config_name, decoder_name = EXPECTED_NAMES[family]
    assert (entry.llava_model_type, entry.causal_lm_class.__name__) == (model_type, lm_name)
    assert (entry.config_class.__name__, entry.decoder_class.__name__) == (config_name, decoder_name)
    assert type(AutoConfig.for_model(model_type)) is entry.config_class
    assert entry.base_lm_class.__name__ in {c.__name__ for c in entry.causal_lm_class.__mro__}
    config = AutoConfig.for_model(model_type, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, vocab_size=64,
                                  pad_token_id=0)
    assert type(AutoModelForCausalLM.from_config(config)) is entry.causal_lm_class
    assert family_of_model_type(family) is family_of_model_type(model_type) is entry


def test_upstream_and_llava_next_import_paths_name_the_registry_classes():
    import llava.model as model
    from llava.model.language_model import llava_gemma, llava_llama, llava_mistral, llava_qwen

    lm = {family: entry.causal_lm_class for family, entry in LLM_FAMILIES.items()}
    assert model.LlavaLlamaForCausalLM is llava_llama.LlavaLlamaForCausalLM is lm["llama"]
    assert llava_llama.LlavaConfig is LLM_FAMILIES["llama"].config_class
    assert model.LlavaMistralForCausalLM is llava_mistral.LlavaMistralForCausalLM is lm["mistral"]
    assert llava_mistral.LlavaMistralConfig is LLM_FAMILIES["mistral"].config_class
    assert model.LlavaQwenForCausalLM is llava_qwen.LlavaQwenForCausalLM is lm["qwen2"]
    assert model.LlavaGemmaForCausalLM is llava_gemma.LlavaGemmaForCausalLM is lm["gemma"]


def test_a_config_of_a_generated_class_pickles():
    config = LLM_FAMILIES["qwen2"].config_class(hidden_size=16, num_attention_heads=2, mm_vision_tower="clip")
    again = pickle.loads(pickle.dumps(config))
    assert type(again) is type(config) and again.mm_vision_tower == "clip"


def test_an_unsupported_model_type_is_an_error_listing_every_family():
    with pytest.raises(UnsupportedFamilyError) as err:
        family_of_model_type("gpt2", where="/models/gpt2")
    message = str(err.value)
    assert message.startswith("/models/gpt2: model_type 'gpt2' is not a supported LLM family")
    for family, (model_type, *_) in EXPECTED_NAMES.items():
        assert f"{family} ({model_type})" in message


@pytest.mark.parametrize("family", EXPECTED_NAMES)
def test_the_llava_class_holds_the_plain_weights_and_gives_the_plain_logits_on_text(lms, family):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(lms[family]), dtype=torch.float32).eval()
    llava = LLM_FAMILIES[family].causal_lm_class.from_pretrained(str(lms[family]), dtype=torch.float32).eval()
    assert type(plain) is LLM_FAMILIES[family].base_lm_class
    plain_state, llava_state = plain.state_dict(), llava.state_dict()
    assert list(llava_state) == list(plain_state)
    assert all(torch.equal(llava_state[k], plain_state[k]) for k in plain_state)
    ids = text_ids(lms[family])
    with torch.inference_mode():
        assert torch.equal(llava(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_gemma2_keeps_its_final_logit_softcap(lms, tmp_path):
    from transformers import Gemma2ForCausalLM

    loud = Gemma2ForCausalLM.from_pretrained(str(lms["gemma2"]), dtype=torch.float32).eval()
    with torch.no_grad():
        loud.model.norm.weight.fill_(1000.0)  # RMSNorm (1 + w): logits far beyond the cap of 30 without it
    loud.save_pretrained(tmp_path)
    llava = LLM_FAMILIES["gemma2"].causal_lm_class.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = text_ids(lms["gemma2"])
    with torch.inference_mode():
        logits = llava(input_ids=ids).logits
        assert torch.equal(logits, loud(input_ids=ids).logits)
        uncapped = loud.lm_head(loud.model(input_ids=ids).last_hidden_state)
    assert uncapped.abs().max() > 100.0 and logits.abs().max() <= loud.config.final_logit_softcapping == 30.0


@pytest.mark.parametrize("family", EXPECTED_NAMES)
def test_config_json_carries_the_legacy_rope_keys_and_reads_back_the_same(tmp_path, family):
    entry = LLM_FAMILIES[family]
    # Phi-3 takes only default and longrope RoPE
    rope, scaling = ({"rope_type": "default", "rope_theta": 500000.0}, None) if family == "phi3" else (
        {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}, {"type": "linear", "factor": 2.0})
    config = entry.config_class(hidden_size=16, num_attention_heads=2, rope_parameters=dict(rope))
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == entry.llava_model_type
    assert (written["rope_theta"], written["rope_scaling"]) == (500000.0, scaling)
    # Phi-3's 4.x configs carry partial_rotary_factor at the top level, not as a scaling parameter
    assert written.get("partial_rotary_factor") == (1.0 if family == "phi3" else None)
    assert entry.config_class.from_pretrained(str(tmp_path)).rope_parameters == config.rope_parameters


@pytest.mark.parametrize(
    ("family", "targets"),
    [*((f, STANDARD_LINEARS) for f in EXPECTED_NAMES if f != "phi3"),
     ("phi3", ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"])],
)
def test_lora_targets_are_the_familys_own_linear_layers(family, targets):
    from llava.train.train import apply_lora, linear_layer_names

    config = LLM_FAMILIES[family].config_class(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64, pad_token_id=0,
    )
    model = LLM_FAMILIES[family].causal_lm_class(config)
    assert linear_layer_names(model) == targets
    args = SimpleNamespace(lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_bias="none", bits=16, bf16=False)
    wrapped = apply_lora(model, args)
    lora_a = [name for name, _ in wrapped.named_parameters() if ".lora_A." in name]
    adapted = {name.split(".lora_A.")[0].rsplit(".", 1)[-1] for name in lora_a}
    assert adapted == set(targets)


def test_sdpa_falls_back_to_eager_only_for_a_family_without_it():
    from llava.model.builder import resolve_attn_implementation

    assert resolve_attn_implementation("sdpa", LLM_FAMILIES["gemma2"].causal_lm_class) == "eager"
    assert resolve_attn_implementation("sdpa", LLM_FAMILIES["llama"].causal_lm_class) == "sdpa"
    assert resolve_attn_implementation("eager", LLM_FAMILIES["gemma2"].causal_lm_class) == "eager"
    assert resolve_attn_implementation(None, LLM_FAMILIES["gemma2"].causal_lm_class) is None


def test_gemma_scales_the_text_embeddings_but_not_the_image_features(lms):
    model = LLM_FAMILIES["gemma"].causal_lm_class.from_pretrained(str(lms["gemma"]), dtype=torch.float32)
    model_args = SimpleNamespace(
        vision_tower=str(FIXTURES / "clip"), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_patch_merge_type="flat", mm_projector_type="linear", pretrain_mm_mlp_adapter=None,
    )
    model.get_model().initialize_vision_modules(model_args)
    ids = text_ids(lms["gemma"])
    prompt = torch.cat([ids[:, :1], torch.tensor([[-200]]), ids[:, 1:]], dim=1)
    images = torch.randn(1, 3, 56, 56)
    with torch.inference_mode():
        spliced, projected = model.splice_multimodal(prompt, None, None, images, padding_side="right")
        embeds = spliced.inputs_embeds[0]
        n = projected.shape[1]
        scale = torch.tensor(model.config.hidden_size ** 0.5, dtype=torch.float32)
        text = model.get_model().embed_tokens.weight[ids[0]] * scale
        assert torch.equal(embeds[:1], text[:1]) and torch.equal(embeds[1 + n:], text[1:])
        assert torch.equal(embeds[1:1 + n], projected[0])


def write_unsupported_llm(folder: Path) -> Path:
    from transformers import GPT2Config

    GPT2Config(n_embd=16, n_layer=1, n_head=2).save_pretrained(folder)
    return folder


def test_training_refuses_an_unsupported_llm_before_loading_anything(tmp_path, monkeypatch):
    import llava.train.train as train

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before the LLM family was checked")

    monkeypatch.setattr(train, "load_tokenizer", refuse)
    llm = write_unsupported_llm(tmp_path / "gpt2-like")
    with pytest.raises(UnsupportedFamilyError, match=rf"{llm}: model_type 'gpt2' is not a supported LLM"):
        train.build_trainer(argv=stage1_flags(llm, FIXTURES / "clip", tmp_path / "out"))


@pytest.fixture(scope="module")
def qwen_stage1(lms, tmp_path_factory) -> Path:
    """Stage 1 (projector only, 2 steps) on the tiny Qwen2 base with non-zero q/k/v biases."""
    from llava.train.train import train

    out = tmp_path_factory.mktemp("qwen-stage1") / "run"
    train(argv=stage1_flags(lms["qwen2"], FIXTURES / "clip", out))
    return out


def test_a_qwen2_base_trains_and_reloads_with_its_qkv_biases_and_plain_logits(lms, qwen_stage1):
    from safetensors.torch import load_file
    from transformers import Qwen2ForCausalLM

    from llava.model.builder import load_pretrained_model

    assert json.loads((qwen_stage1 / "config.json").read_text())["model_type"] == "llava_qwen"
    _, model, _, _ = load_pretrained_model(
        str(qwen_stage1), str(lms["qwen2"]), device_map="cpu", device="cpu"
    )
    assert type(model).__name__ == "LlavaQwenForCausalLM"
    base = load_file(str(lms["qwen2"] / "model.safetensors"))
    biases = [k for k in base if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))]
    assert len(biases) == 3 * 2 and all(base[k].abs().sum() > 0 for k in biases)
    state = model.state_dict()
    assert all(torch.equal(state[k], base[k]) for k in biases)
    plain = Qwen2ForCausalLM.from_pretrained(str(lms["qwen2"]), dtype=torch.float32).eval()
    ids = text_ids(lms["qwen2"])
    with torch.inference_mode():
        assert torch.equal(model.eval()(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_a_checkpoint_is_refused_with_a_base_of_another_family(lms, qwen_stage1):
    from llava.model.builder import load_pretrained_model

    message = rf"trained on a qwen2 LLM \(llava_qwen\), but its base {lms['llama']} is a llama model"
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(str(qwen_stage1), str(lms["llama"]), device_map="cpu", device="cpu")


def test_weights_the_configs_family_would_drop_are_an_error_not_a_warning(lms, qwen_stage1, tmp_path):
    """The measured bug: Qwen2 weights under a Llama config load into the Llama class minus their biases."""
    from llava.model.builder import load_pretrained_model

    mislabelled = tmp_path / "qwen-weights-llama-config"
    shutil.copytree(lms["qwen2"], mislabelled)
    config = json.loads((qwen_stage1 / "config.json").read_text())
    (mislabelled / "config.json").write_text(json.dumps({**config, "model_type": "llava_llama"}))
    message = r"has weights that LlavaLlamaForCausalLM does not take .*q_proj\.bias"
    with pytest.raises(ValueError, match=message):
        load_pretrained_model(str(mislabelled), None, device_map="cpu", device="cpu")


@pytest.mark.parametrize("template", ["llava_llama_2", "llama_2", "mistral_instruct"])
def test_llama2_style_answers_stop_at_the_end_of_sequence_token(template):
    from llava.conversation import conv_templates
    from llava.eval.run_llava import stop_string

    # mistral_instruct's sep is empty, which generation refuses as a stop string
    assert stop_string(conv_templates[template]) == "</s>"


def test_training_refuses_a_siglip_tower_with_cls_patch_before_loading_anything(tmp_path, monkeypatch):
    import llava.train.train as train
    from llava.tiny import build_tiny_siglip

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before the tower was checked")

    monkeypatch.setattr(train, "load_tokenizer", refuse)
    siglip = build_tiny_siglip(tmp_path / "siglip", image_size=56, patch_size=14)
    flags = stage1_flags(FIXTURES / "llm", siglip, tmp_path / "out", mm_vision_select_feature="cls_patch")
    with pytest.raises(ValueError, match="mm_vision_select_feature='cls_patch' is not supported"):
        train.build_trainer(argv=flags)
