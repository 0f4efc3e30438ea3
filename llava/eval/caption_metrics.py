"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through pycocoevalcap.

Captions are tokenised first, as the COCO caption evaluation does. With Java on the PATH
that is pycocoevalcap's Stanford PTB tokenizer; without Java a small regex tokenizer
(`simple_tokenize`) stands in, and METEOR (a Java program) is skipped. SPICE is always
skipped: it fetches Stanford CoreNLP models on first use, which an offline machine cannot.
Every skip is logged and named in the result under "skipped".
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

try:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
except ImportError as error:  # an optional extra: say how to get it
    raise ImportError("caption metrics need pycocoevalcap: pip install 'patch-align[eval]'") from error

logger = logging.getLogger(__name__)

SPICE_SKIP_REASON = ("SPICE skipped: it downloads Stanford CoreNLP models on first use "
                     "and this setup is offline")
METEOR_SKIP_REASON = "METEOR skipped: it runs on Java and no `java` was found on PATH"

# Clitics split off as their own tokens, as the PTB tokenizer does ("don't" → "do n't").
_NEGATION = re.compile(r"n't\b")
_CLITIC = re.compile(r"'(s|re|ve|ll|d|m)\b")
# A token is a clitic or a run of letters/digits, possibly joined by inner hyphens or
# periods ("black-and-white", "2.5"); every other character is punctuation and dropped,
# matching the punctuation tokens pycocoevalcap removes after PTB tokenisation.
_TOKEN = re.compile(r"n't|'[a-z]+|[^\W_]+(?:[-.][^\W_]+)*")


def java_available() -> bool:
    """Whether a `java` executable is on PATH (PTB tokenizer and METEOR need one)."""
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> list[str]:
    """Lower-cased word tokens with PTB-style clitics and punctuation removed.

    "A man's hat, don't you see?" → ["a", "man", "'s", "hat", "do", "n't", "you", "see"].
    It agrees with the PTB tokenizer on ordinary captions; rare constructs (URLs, unusual
    quotes, abbreviations with inner periods) may split differently.
    """
    text = _NEGATION.sub(" n't", text.lower())
    text = _CLITIC.sub(r" '\1", text)
    return _TOKEN.findall(text)


def tokenize_captions(captions: Mapping[str, list[str]], use_java: bool) -> dict[str, list[str]]:
    """Caption lists → the same lists as space-joined tokens (PTB with Java, `simple_tokenize` without)."""
    if use_java:
        ptb_input = {key: [{"caption": c} for c in texts] for key, texts in captions.items()}
        return PTBTokenizer().tokenize(ptb_input)
    return {key: [" ".join(simple_tokenize(c)) for c in texts] for key, texts in captions.items()}


def check_references(references: Mapping[str, object], source: str = "references") -> None:
    """Every id's references must be a non-empty list of strings; the error names `source` and the id."""
    for key, refs in references.items():
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{source}: references of id {key!r} must be a non-empty list of strings, "
                             f"got {refs!r}")


def read_references(path: str | Path) -> dict[str, list[str]]:
    """A references file (JSON object: id → reference captions) read and checked; ids become strings."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping question id to reference captions, "
                         f"got {type(data).__name__}")
    references = {str(key): refs for key, refs in data.items()}
    check_references(references, str(path))
    return references


def _check_inputs(references: Mapping[str, list[str]], predictions: Mapping[str, str]) -> None:
    if not predictions:
        raise ValueError("no predictions to score")
    without_refs = sorted(set(predictions) - set(references), key=str)
    without_pred = sorted(set(references) - set(predictions), key=str)
    if without_refs:
        raise ValueError(f"{len(without_refs)} predictions have no references, e.g. id {without_refs[0]!r}")
    if without_pred:
        raise ValueError(f"{len(without_pred)} references have no prediction, e.g. id {without_pred[0]!r}")
    check_references(references)
    for key in references:
        if not isinstance(predictions[key], str):
            kind = type(predictions[key]).__name__
            raise TypeError(f"prediction of id {key!r} must be a string, got {kind}")


def score_captions(references: Mapping[str, list[str]], predictions: Mapping[str, str]) -> dict:
    """Corpus-level caption scores.

    `references` maps image id → reference captions; `predictions` maps the same ids → one
    generated caption each. Returns `{"Bleu_1".."Bleu_4", "METEOR" (with Java), "ROUGE_L",
    "CIDEr", "tokenizer": "ptb"|"simple", "skipped": {metric: reason}}`; scores are the
    usual fractions in [0, 1], except CIDEr, which pycocoevalcap scales by 10 (unbounded).
    """
    _check_inputs(references, predictions)
    use_java = java_available()
    skipped = {"SPICE": SPICE_SKIP_REASON}
    if not use_java:
        skipped["METEOR"] = METEOR_SKIP_REASON
        logger.warning("%s; tokenising with simple_tokenize instead of the PTB tokenizer", METEOR_SKIP_REASON)
    logger.warning(SPICE_SKIP_REASON)
    gts = tokenize_captions(references, use_java)
    res = tokenize_captions({key: [caption] for key, caption in predictions.items()}, use_java)

    scores: dict = {"tokenizer": "ptb" if use_java else "simple", "skipped": skipped}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"Bleu_{n}": float(b) for n, b in enumerate(bleu, start=1)})
    if use_java:
        scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores
