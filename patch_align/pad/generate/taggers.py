"""Taggers: the first PAD stage, which names what to look for in each image.

Every tagger has the same interface: `image_processor` (a transformers image processor,
or None when the tagger does not look at pixels) runs in DataLoader workers, and
`tag(samples, prepared)` returns one list of tags per sample, in order, given what the
image processor made of the batch. Three taggers:

- `captions`: noun phrases from the sample's own caption, by the rules of
  `caption_noun_phrases` (no parser or model needed);
- `file`: tags read from a JSONL file, one `{"id": ..., "tags": [...]}` per image (for
  example produced offline by RAM, which transformers does not ship);
- `clip`: zero-shot multi-label tagging against a vocabulary file with a CLIP model:
  every vocabulary entry whose image-text cosine similarity reaches a threshold.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

# Words that end a noun phrase and are never part of one: articles, determiners,
# pronouns, prepositions, conjunctions, auxiliaries and the commonest caption verbs.
BREAK_WORDS = frozenset(
    """
a an the this that these those some any each every no another other its it it's his her hers their
theirs our ours my your i you he she we they them him us me there here who whom whose which what
of in on at by for with without from to into onto over under above below near beside behind between
through across along around about against among inside outside up down off out before after during
while as like than and or but nor so yet if then when where why how very too also just only not
is are was were be been being am has have had do does did will would can could should may might must
sits sitting sit stands standing stand holds holding hold looks looking look shows showing show
lies lying lay walks walking walk runs running run rides riding ride wears wearing wear made make
makes using use uses set sets get gets getting go goes going come comes coming see seen seeing
one two three four five six seven eight nine ten several many few more most much lot lots front top
""".split()
)

# Words that describe the picture itself rather than something in it.
GENERIC_WORDS = frozenset(
    """
image images photo photos photograph picture pictures illustration illustrations stock vector
vectors royalty free background backgrounds view close closeup closeups shot shots stock-photo
close-up clipart clip art drawing drawings cartoon rendering render design designs pattern patterns
""".split()
)

MAX_PHRASE_WORDS = 3

_WORD = re.compile(r"[a-z][a-z'-]*")
# Clause punctuation and digits split phrases; apostrophes and hyphens stay inside words.
_SPLIT = re.compile(r"[^a-z'\- ]+")


def _looks_like_verb(word: str) -> bool:
    return word.endswith("ing") or (len(word) >= 5 and word.endswith("ed") and not word.endswith("eed"))


def caption_noun_phrases(caption: str) -> list[str]:
    """Noun phrases of an English caption, by word lists instead of a parser.

    Rules, in order: lower-case; split into clauses at any character that is not a
    letter, apostrophe, hyphen or space (so punctuation and digits end a phrase); inside
    a clause, a phrase is a maximal run of words that are not in `BREAK_WORDS` and do not
    end in "ing" (gerunds are nearly always verbs in captions); drop the words of
    `GENERIC_WORDS` (they name the picture, not its content), which also splits the run;
    keep the last `MAX_PHRASE_WORDS` words of a run (English heads come last:
    "big old red car" -> "old red car"); drop phrases of one letter; remove duplicates,
    keeping first-seen order.
    """
    phrases: list[str] = []
    for clause in _SPLIT.split(caption.lower()):
        run: list[str] = []
        for word in [*_WORD.findall(clause), ""]:  # "" flushes the last run
            word = word.strip("'-")
            if word and word not in BREAK_WORDS and word not in GENERIC_WORDS and not _looks_like_verb(word):
                run.append(word)
                continue
            phrase = " ".join(run[-MAX_PHRASE_WORDS:])
            if len(phrase) > 1 and phrase not in phrases:
                phrases.append(phrase)
            run = []
    return phrases


@dataclass(frozen=True)
class SampleInfo:
    """What a tagger may use about one image: its LLaVA id, relative path and caption ('' if none)."""

    id: str
    image: str
    caption: str


class CaptionTagger:
    """Tags = noun phrases of the sample's caption (`caption_noun_phrases`), at most `max_tags`."""

    name = "captions"

    def __init__(self, max_tags: int):
        self.max_tags = max_tags

    def settings(self) -> dict[str, Any]:
        return {"tagger": self.name, "max_tags": self.max_tags}

    image_processor = None

    def tag(self, samples: list[SampleInfo], prepared: Any) -> list[list[str]]:
        return [caption_noun_phrases(s.caption)[: self.max_tags] for s in samples]


class FileTagger:
    """Tags from a JSONL file of `{"id": str, "tags": [str, ...]}`; an image absent from it gets none."""

    name = "file"

    def __init__(self, path: str | os.PathLike, max_tags: int):
        self.path = str(path)
        self.max_tags = max_tags
        self.tags_by_id = read_tag_file(path)

    def settings(self) -> dict[str, Any]:
        return {"tagger": self.name, "tags_file": self.path, "max_tags": self.max_tags}

    image_processor = None

    def tag(self, samples: list[SampleInfo], prepared: Any) -> list[list[str]]:
        return [self.tags_by_id.get(s.id, [])[: self.max_tags] for s in samples]


def read_tag_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """`{id: tags}` from a JSONL tag file; raises ValueError naming the file and line of a bad entry."""
    tags_by_id: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON: {err.msg}") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise ValueError(f"{where}: expected an object with a string 'id'")
            tags = entry.get("tags")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError(f"{where}: 'tags' must be a list of strings")
            if entry["id"] in tags_by_id:
                raise ValueError(f"{where}: id {entry['id']} appears twice")
            tags_by_id[entry["id"]] = [t.strip().lower() for t in tags if t.strip()]
    return tags_by_id


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Tag vocabulary, one entry a line, blank lines skipped, duplicates removed in order."""
    with open(path, encoding="utf-8") as f:
        vocabulary = list(dict.fromkeys(line.strip().lower() for line in f if line.strip()))
    if not vocabulary:
        raise ValueError(f"vocabulary file {path} has no entries")
    return vocabulary


def multilabel_tags(
    similarity: torch.Tensor, vocabulary: list[str], threshold: float, max_tags: int
) -> list[list[str]]:
    """Per image, the vocabulary entries with cosine similarity >= `threshold`, best first.

    `similarity` is (B, V) cosine similarities between images and vocabulary entries.
    """
    tags: list[list[str]] = []
    for row in similarity:
        order = torch.argsort(row, descending=True, stable=True)
        tags.append([vocabulary[int(i)] for i in order[:max_tags] if row[i] >= threshold])
    return tags


class ClipTagger:
    """Zero-shot multi-label tagging: CLIP image embedding against embeddings of a fixed vocabulary."""

    name = "clip"

    def __init__(
        self,
        model_path: str,
        vocabulary_path: str | os.PathLike,
        threshold: float,
        max_tags: int,
        device: torch.device,
    ):
        from transformers import AutoProcessor, CLIPModel

        self.model_path = model_path
        self.vocabulary_path = str(vocabulary_path)
        self.threshold = threshold
        self.max_tags = max_tags
        self.device = device
        self.vocabulary = read_vocabulary(vocabulary_path)
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.model = CLIPModel.from_pretrained(model_path).to(device).eval()
        with torch.no_grad():
            # Truncate at the text tower's positions: a long entry must not overflow them.
            text = self.processor.tokenizer(
                self.vocabulary,
                padding=True,
                truncation=True,
                max_length=self.model.config.text_config.max_position_embeddings,
                return_tensors="pt",
            ).to(device)
            self.text_embeddings = _unit(self.model.get_text_features(**text))

    def settings(self) -> dict[str, Any]:
        return {
            "tagger": self.name,
            "clip_model": self.model_path,
            "vocabulary": self.vocabulary_path,
            "clip_threshold": self.threshold,
            "max_tags": self.max_tags,
        }

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    def similarities(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, V) float32 cosine similarity of each image with each vocabulary entry, on the CPU.

        `prepared` is the CLIP image processor's output for the batch (`pixel_values` (B, 3, H, W)).
        """
        with torch.no_grad():
            image = _unit(
                self.model.get_image_features(pixel_values=prepared["pixel_values"].to(self.device))
            )
        return (image @ self.text_embeddings.T).float().cpu()

    def tag(self, samples: list[SampleInfo], prepared: dict[str, torch.Tensor]) -> list[list[str]]:
        return multilabel_tags(self.similarities(prepared), self.vocabulary, self.threshold, self.max_tags)


def _unit(features: Any) -> torch.Tensor:
    # transformers 5 may return a model output instead of a bare tensor from get_*_features
    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(tensor.float(), dim=-1)
