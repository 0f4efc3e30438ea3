"""Generation ends on a family template's turn-end token, as it ends on EOS.

The model is a real tiny LlamaForCausalLM wired to follow a fixed chain of tokens greedily:
its blocks write nothing (zero output projections), so the last hidden state is the last token's
embedding, and the head maps each chain token's embedding to the next chain token.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava.eval.generation import GenerationSettings, generate_batch, generate_token_ids, stop_token_ids
from llava.eval.run_llava import new_chat, single_turn_prompt, stop_string
from llava.tiny_tokenizers import SAMPLE_CORPUS, build_tiny_tokenizer

TEMPLATE_TOKENIZER = {"llama_3": "llama3", "qwen_2": "qwen2", "gemma": "gemma", "phi3": "phi3"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop_tokenizers")
    kinds = set(TEMPLATE_TOKENIZER.values())
    return {kind: build_tiny_tokenizer(kind, root / kind, SAMPLE_CORPUS) for kind in kinds}


def distinct_ids(tokenizer, text: str, exclude: list[int]) -> list[int]:
    """The ids of `text` less repeated and excluded ones: a chain must not revisit a token."""
    ids: list[int] = []
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        if token not in ids and token not in exclude:
            ids.append(token)
    return ids


def chain_model(vocab_size: int, chain: list[int]) -> LlamaForCausalLM:
    """Greedy decoding from chain[0] yields chain[1], chain[2], ... (and token 0 after the last)."""
    hidden = 16
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for step, (token, following) in enumerate(zip(chain, chain[1:], strict=False)):
            model.model.embed_tokens.weight[token, step] = 1.0
            model.lm_head.weight[following, step] = 10.0
    return model


@pytest.mark.parametrize("name", sorted(TEMPLATE_TOKENIZER))
def test_answer_ids_stop_at_the_turn_end_token(name, tokenizers):
    tokenizer = tokenizers[TEMPLATE_TOKENIZER[name]]
    prompt = torch.tensor(tokenizer(single_turn_prompt(name, "Hi")).input_ids)
    turn_end = tokenizer.convert_tokens_to_ids(new_chat(name).sep)
    answer = distinct_ids(tokenizer, "red box", [int(prompt[-1]), turn_end])
    after = distinct_ids(tokenizer, "green", [int(prompt[-1]), turn_end, *answer])
    assert len(answer) >= 2 and after
    model = chain_model(len(tokenizer), [int(prompt[-1]), *answer, turn_end, *after])

    def generate(stop_strings):
        settings = GenerationSettings(max_new_tokens=12, stop_strings=stop_strings)
        [ids] = generate_token_ids(model, tokenizer, [prompt], [None], [[]], settings)
        return ids

    assert generate((stop_string(new_chat(name)),)) == answer
    # Without the template's stop the same model runs past the turn end (unless it is also EOS).
    runs_on = generate(())
    if turn_end == tokenizer.eos_token_id:
        assert runs_on == answer
    else:
        assert runs_on[: len(answer) + 1 + len(after)] == [*answer, turn_end, *after]


@pytest.mark.parametrize("name", sorted(TEMPLATE_TOKENIZER))
def test_batched_answers_of_a_family_template_decode_without_the_turn_end(name, tokenizers):
    tokenizer = tokenizers[TEMPLATE_TOKENIZER[name]]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompt = single_turn_prompt(name, "Hi")
    last = tokenizer(prompt).input_ids[-1]
    turn_end = tokenizer.convert_tokens_to_ids(new_chat(name).sep)
    answer = distinct_ids(tokenizer, "red box", [last, turn_end])
    after = distinct_ids(tokenizer, "green", [last, turn_end, *answer])
    model = chain_model(len(tokenizer), [last, *answer, turn_end, *after])
    texts = generate_batch(
        model, tokenizer, [prompt, prompt], [None, None], None, max_new_tokens=12,
        stop_strings=[stop_string(new_chat(name))],
    )
    expected = tokenizer.decode(answer).strip()
    assert expected and "green" not in expected
    assert texts == [expected, expected]


def test_stop_ids_are_eos_then_special_single_token_stop_strings_only(tokenizers):
    gemma = tokenizers["gemma"]
    end_of_turn = gemma.convert_tokens_to_ids("<end_of_turn>")
    assert stop_token_ids(gemma, ["<end_of_turn>", "###", "\n"]) == [gemma.eos_token_id, end_of_turn]
    llama3 = tokenizers["llama3"]
    assert stop_token_ids(llama3, ["<|eot_id|>"]) == [llama3.eos_token_id]  # the Instruct eos already
