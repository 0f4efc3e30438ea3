"""The app's page handlers on the tiny upstream checkpoint (no browser): images, patches, words,
regions and chat give analyze's and llava's own numbers, and bad input gives a message, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patch_align.analysis.runner import AnalysisOptions, RegionCounts, prepare_image
from patch_align.app.handlers import AppHandlers, as_messages
from patch_align.app.session import AppInputError, load_sessions
from patch_align.app.views import patch_nearest_words
from patch_align.cli import main


@pytest.fixture(scope="module")
def handlers(golden_dir) -> AppHandlers:
    fixtures = golden_dir / "fixtures-437"
    sessions = load_sessions(
        [(str(golden_dir / "llava-v1.5-tiny"), None)], None, "cpu", str(fixtures / "pad.json"),
        str(fixtures / "images"),
    )
    return AppHandlers(sessions, fixtures / "images")


def test_the_picker_lists_pad_records_then_image_files(handlers):
    choices = handlers.choices()
    assert choices[0] == "PAD record s000"
    assert "img000.png" in choices
    assert choices.index("img000.png") > max(i for i, c in enumerate(choices) if c.startswith("PAD record"))


def test_no_image_and_a_non_image_file_give_messages(handlers, tmp_path):
    columns, message = handlers.load_image(None, None)
    assert columns[0].view is None and message == "⚠️ no image: upload or pick one first"
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    columns, message = handlers.load_image(str(text), None)
    assert columns[0].view is None
    assert message.startswith("⚠️ notes.txt is not an image file")
    _, texts, message = handlers.select_patch(columns, 0.5, 0.5)
    assert message == "⚠️ no image: upload or pick one first" and texts == [""]
    images, message = handlers.word_heatmaps(columns, "box")
    assert images == [None] and message == "⚠️ no image: upload or pick one first"


def test_a_pad_record_is_prepared_and_scored_as_analyze_does(handlers, golden_dir):
    columns, message = handlers.load_image(None, "PAD record s000")
    assert message.startswith("s000: 80x60 px shown as the model saw it (pad: 56x56 px, 4x4 patches")
    session, view = handlers.sessions[0], columns[0].view
    record = session.pad["s000"]
    options = AnalysisOptions()
    prepared = prepare_image(record, golden_dir / "fixtures-437" / "images", session.analysis, options,
                             RegionCounts())
    assert torch.equal(view.pixels, prepared.pixels) and torch.equal(view.masks, prepared.masks)
    _, projected = session.analysis.encode(prepared.pixels[None])
    embeddings = session.analysis.label_embeddings(prepared.label_token_ids)
    example = session.accumulator.example(prepared, projected[0], embeddings, (4, 4), 14)
    scores = session.regions(view)
    assert [s.label for s in scores] == example.labels == ["yellow box", "blue box"]
    assert [s.iou for s in scores] == pytest.approx(example.iou, abs=1e-6)
    assert [s.pointing_hit for s in scores] == example.pointing_hit
    heat = session.heatmap(view, "yellow box")
    assert heat.reshape(-1) == pytest.approx(example.cosines[0].tolist(), abs=1e-6)
    [(overlay, text)] = handlers.region_views(columns)
    assert overlay.size == (448, 448)
    assert "| yellow box |" in text and "mIoU" in text


def test_clicking_a_patch_shows_its_nearest_words_mp_and_original_pixels(handlers):
    columns, _ = handlers.load_image(None, "PAD record s000")
    updated, [text], message = handlers.select_patch(columns, 0.6, 0.3)  # row 1, column 2
    assert updated[0].selected == 6
    # 80x60 padded to 80x80 (10 px on top): a 14-px model patch is 20 original px
    assert message == "patch 6 (row 1, column 2) = original pixels x 40.0..60.0, y 10.0..30.0"
    session = handlers.sessions[0]
    nearest = patch_nearest_words(columns[0].view.patch_tokens, session.accumulator.dictionary,
                                  session.accumulator.word_texts, 5)[6]
    assert f"| {nearest.words[0][0]} | {nearest.words[0][1]:+.3f} |" in text
    assert text.startswith("patch 6 (row 1, column 2) = original pixels x 40.0..60.0")
    assert "**Matching pursuit**" in text and "explained variance" in text
    _, _, message = handlers.select_patch(columns, 1.0, 0.5)
    assert message == "⚠️ point (56, 28) is outside the 4x4 patch grid"


def test_unknown_and_empty_words_give_messages(handlers):
    columns, _ = handlers.load_image(None, "PAD record s000")
    images, message = handlers.word_heatmaps(columns, "☃")
    assert images == [None]
    assert message.startswith("⚠️ '☃' is not in the vocabulary")
    images, message = handlers.word_heatmaps(columns, "   ")
    assert images == [None] and message == "⚠️ type a word or phrase (it has no tokens)"
    images, message = handlers.word_heatmaps(columns, "box")
    assert images[0].size == (448, 448)
    assert message.startswith("'box': upstream_golden/llava-v1.5-tiny: cosine ")


def test_chat_streams_the_greedy_answer_of_llavas_generation_and_keeps_turns(handlers, golden_dir):
    from llava.eval.generation import generate_batch
    from llava.eval.run_llava import new_chat, stop_string

    columns, _ = handlers.load_image(None, "PAD record s000")
    steps = list(handlers.chat(columns, [[]], "What is this?", 0.0, 1.0, 8))
    assert len(steps) > 3  # token by token, then the final answer
    history, message = steps[-1]
    assert message == "answered"
    [[(question, answer)]] = history
    session = handlers.sessions[0]
    prompt = session.prompt([("What is this?", None)], has_image=True)
    image = columns[0].view
    from PIL import Image

    original = Image.open(golden_dir / "fixtures-437" / "images" / "img000.png").convert("RGB")
    [expected] = generate_batch(session.analysis.model, session.analysis.tokenizer, [prompt], [original],
                                session.analysis.grid.image_processor, max_new_tokens=8,
                                stop_strings=[stop_string(new_chat(session.conv_mode))])
    assert question == "What is this?" and answer == expected
    assert image.original_size == original.size
    second = list(handlers.chat(columns, history, "And the colour?", 0.0, 1.0, 4))[-1][0][0]
    assert [q for q, _ in second] == ["What is this?", "And the colour?"]
    assert session.prompt(second, True).count("<image>") == 1  # the image stays in turn one only
    assert as_messages(second)[:2] == [{"role": "user", "content": "What is this?"},
                                       {"role": "assistant", "content": answer}]


def test_text_only_chat_and_bad_questions(handlers):
    empty = [c for c in handlers.load_image(None, None)[0]]
    history, message = list(handlers.chat(empty, [[]], "Hello?", 0.0, 1.0, 4))[-1]
    assert message == "answered (text only: no image)" and history[0][0][0] == "Hello?"
    assert "<image>" not in handlers.sessions[0].prompt(history[0], has_image=False)
    assert list(handlers.chat(empty, [[]], "  ", 0.0, 1.0, 4)) == [([[]], "⚠️ type a question first")]
    _, message = list(handlers.chat(empty, [[]], "Hi", 0.5, 0.0, 4))[-1]
    assert message == "⚠️ top_p must be in (0, 1], got 0.0"


def test_bad_checkpoints_and_flags_are_refused_before_a_model_loads(golden_dir, tmp_path, capsys):
    with pytest.raises(AppInputError, match="has no config.json"):
        load_sessions([(str(tmp_path), None)], None, "cpu", None, None)
    checkpoint = str(golden_dir / "llava-v1.5-tiny")
    cases = [
        (["--model-path", str(tmp_path / "missing")], "no such file or folder"),
        (["--model-path", checkpoint, "--compare", str(tmp_path)], "is not a checkpoint folder"),
        (["--model-path", checkpoint, "--pad", "x.json"], "--pad needs --image-folder"),
        (["--model-path", checkpoint, "--conv-mode", "nope"], "--conv-mode 'nope' is not a template"),
        (["--model-path", checkpoint, "--port", "0"], "--port 0 is not a TCP port"),
    ]
    for argv, message in cases:
        assert main(["app", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("patch-align app: error: ") and message in err, (argv, err)


def test_a_folder_that_is_not_a_llava_checkpoint_is_named(golden_dir):
    llm = Path(golden_dir / "fixtures-437" / "llm")  # a plain Llama: config.json, no vision tower
    with pytest.raises(AppInputError, match="cannot be loaded as a LLaVA checkpoint"):
        load_sessions([(str(llm), None)], None, "cpu", None, None)
