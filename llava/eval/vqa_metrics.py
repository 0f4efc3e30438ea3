"""Answer scoring for VQA-style benchmarks: VQA accuracy, exact match and option letters.

Normalisation (`normalize_vqa_answer`) follows the published VQA evaluation:
1. newlines/tabs become spaces, the text is stripped and lower-cased;
2. punctuation: each mark in `PUNCTUATION` is deleted when it touches a space or when
   the text contains a digit,digit group ("1,000"), and replaced by a space otherwise;
   a period is deleted unless a digit follows it ("2.5" stays, "yes." → "yes");
3. words: number words become digits (`NUMBER_WORDS`), the articles a/an/the are
   dropped, and apostrophe-less contractions get their apostrophe (`CONTRACTIONS`).
The official script skips normalisation when all ten human answers agree; here both sides
are always normalised, which is what scoring LLaVA's pre-normalised submissions amounts to.

VQA accuracy (`vqa_accuracy`) is the official leave-one-out form: for each of the n human
answers, drop it and score min(#remaining answers equal to the prediction / 3, 1); average
the n scores. With ten humans of whom k agree with the prediction this gives 0, 0.3, 0.6,
0.9, 1.0 for k = 0..4+, the usual "min(#humans/3, 1)" averaged over the subsets.

Option letters (`extract_option_letter`), tried in order:
1. the whole answer is one letter, optionally wrapped or followed by punctuation:
   "A", "b", "(C)", "D.", "E)";
2. "answer is X" / "answer: X" anywhere, X an upper-case letter, optionally in parentheses;
3. the answer starts with an upper-case letter followed by ".", ")" or ":" ("B. a cat");
4. the first "(X)" with X an upper-case letter.
Anything else yields None and is scored as wrong (and counted).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# Key: the contraction as annotators typed it without (some) apostrophes; value: canonical form.
# This is the official table as it acts on lower-cased words: its capitalised "I" entries
# (Im, Ive, Id've, I'dve) never match and its no-op entries are left out; its reversed
# "somebody'd" → "somebodyd" entry is kept so scores agree with the official ones.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_WHOLE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:)]?$")
_ANSWER_IS_LETTER = re.compile(r"answer(?: is|:)\s*:?\s*\(?([A-Z])\b")
_LEADING_LETTER = re.compile(r"^([A-Z])[.):]")
_PARENTHESISED_LETTER = re.compile(r"\(([A-Z])\)")

Metric = Literal["vqa", "exact", "option"]


def _strip_punctuation(text: str) -> str:
    has_digit_comma_digit = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if has_digit_comma_digit or mark + " " in text or " " + mark in text:
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", text)


def normalize_vqa_answer(text: str) -> str:
    """The VQA evaluation's canonical form of an answer (steps in the module doc)."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    words = []
    for word in _strip_punctuation(text).split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Leave-one-out VQA accuracy of one prediction against n ≥ 2 human answers, in [0, 1]."""
    if len(human_answers) < 2:
        raise ValueError(f"VQA accuracy needs at least 2 human answers, got {len(human_answers)}")
    predicted = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(a) == predicted for a in human_answers]
    total_matches = sum(matches)
    return sum(min((total_matches - left_out) / 3, 1.0) for left_out in matches) / len(matches)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when both normalise to the same text (GQA's metric), else 0.0."""
    return float(normalize_vqa_answer(prediction) == normalize_vqa_answer(answer))


def extract_option_letter(text: str) -> str | None:
    """The option letter a model answered ("A", "B", ...), or None (rules in the module doc)."""
    text = text.strip()
    whole = _WHOLE_LETTER.match(text)
    if whole:
        return whole.group(1).upper()
    for pattern in (_ANSWER_IS_LETTER, _LEADING_LETTER, _PARENTHESISED_LETTER):
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def option_letter_of(answer: Any) -> str:
    """A ground-truth option as a letter: a letter stays, an int index i becomes chr(ord('A') + i)."""
    if isinstance(answer, bool):
        raise TypeError(f"option answer must be a letter or an index, got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < 26:
            raise ValueError(f"option index out of range A-Z: {answer}")
        return chr(ord("A") + answer)
    if not isinstance(answer, str):
        raise TypeError(f"option answer must be a letter or an index, got {answer!r}")
    if len(answer.strip()) != 1 or not answer.strip().isalpha():
        raise ValueError(f"option answer must be a single letter, got {answer!r}")
    return answer.strip().upper()


def score_answers(
    ground_truth: Mapping[str, Any], predictions: Mapping[str, str], metric: Metric
) -> dict[str, Any]:
    """Score predictions against ground truth; ids are compared as strings.

    `ground_truth` maps question id → a list of human answers (`vqa`), one answer (`exact`),
    or an option letter / index (`option`). A question without a prediction scores 0 and
    is listed under `missing`; for `option`, answers with no extractable letter score 0
    and are listed under `unparsed`. A prediction for an unknown question is an error.

    Returns `{"metric", "accuracy", "total", "answered", "missing", "unparsed"}`
    (accuracy in [0, 1] over all `total` questions).
    """
    if metric not in ("vqa", "exact", "option"):
        raise ValueError(f"unknown metric {metric!r}; expected vqa, exact or option")
    if not ground_truth:
        raise ValueError("no ground-truth questions to score")
    truth = {str(k): v for k, v in ground_truth.items()}
    predicted = {str(k): v for k, v in predictions.items()}
    unknown = sorted(set(predicted) - set(truth))
    if unknown:
        raise ValueError(f"{len(unknown)} predictions have no ground truth, e.g. question_id {unknown[0]!r}")
    score_sum = 0.0
    missing: list[str] = []
    unparsed: list[dict[str, str]] = []
    for qid, expected in truth.items():
        if qid not in predicted:
            missing.append(qid)
            continue
        answer = predicted[qid]
        if metric == "vqa":
            score_sum += vqa_accuracy(answer, expected)
        elif metric == "exact":
            score_sum += exact_match(answer, expected)
        else:
            letter = extract_option_letter(answer)
            if letter is None:
                unparsed.append({"question_id": qid, "text": answer})
            else:
                score_sum += float(letter == option_letter_of(expected))
    return {"metric": metric, "accuracy": score_sum / len(truth), "total": len(truth),
            "answered": len(truth) - len(missing), "missing": missing, "unparsed": unparsed}
