"""The SEA label vocabulary: nouns and attribute words taken from captions by a rule-based tagger.

The paper extracts nouns and attributes "by syntactic analysis"; we use a dependency-free
tagger instead (our choice: no parser model to download, same result on every machine).
A caption is lower-cased and split into words `[a-z]+(-[a-z]+)*`; each word is then
1. kept if it is in an attribute list (colours, sizes, shapes, materials, textures, ...),
2. dropped if it is a function word or a common caption verb/adverb (`FUNCTION_WORDS`),
3. dropped if it is shorter than 3 letters,
4. dropped if a suffix marks it as a verb or adverb: `-ly` (length >= 6, e.g. "quickly",
   except `NOUNS_ENDING_LY`), `-ed` (length >= 5, e.g. "parked", except words ending in
   "-eed"), `-ing` unless the previous word is a determiner or a listed attribute ("a building",
   "the old painting"; but "a man riding" drops "riding"),
5. otherwise kept as a noun.
Words keep their surface form (no lemmatisation: "dog" and "dogs" are two labels) because
heuristic singularisation breaks words such as "glass" or "bus".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

ATTRIBUTE_WORDS = frozenset(
    # colours
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold golden "
    "beige tan teal turquoise maroon navy cream colorful colourful dark light bright pale "
    # sizes and shapes
    "big small large tiny huge giant little tall short long wide narrow thick thin round square "
    "rectangular circular oval triangular curved flat straight pointed "
    # materials and textures
    "wooden metal metallic plastic glass stone brick leather paper concrete steel fabric cotton "
    "wool furry fluffy hairy shiny smooth rough wet dry striped spotted dotted checkered plaid "
    # states and ages
    "old new young empty full open closed broken clean dirty fresh cooked raw ripe sliced "
    "hot cold sunny cloudy snowy rainy foggy".split()
)

FUNCTION_WORDS = frozenset(
    # determiners, pronouns, quantifiers
    "the a an this that these those some any each every all both either neither no none another "
    "other such what which who whom whose it its they them their theirs he him his she her hers "
    "we us our you your i me my one ones something someone anything nothing there here "
    # prepositions and conjunctions
    "of in on at to for with without by from into onto upon over under above below behind beside "
    "besides between among around through across along against near next inside outside off out "
    "up down about after before during while as than and or but nor so yet if then because "
    "where when how why towards toward via per amid within "
    # auxiliaries and common caption verbs
    "is are was were be been being am has have had having do does did can could will would shall "
    "should may might must sits sit sat stands stand stood lies lie lay looks look shows show "
    "shown holds hold held wears wear worn contains contain uses use used made make makes "
    "features feature featuring includes include including appears appear seems seem gets get "
    "goes go going comes come "
    # adverbs and other non-visual words
    "very too also just only not still even really quite much many more most few several lot lots "
    "well together again away back front top bottom left right side middle center centre "
    "image picture photo photograph view close closeup shot scene background foreground stock "
    "illustration vector".split()
)

NOUNS_ENDING_LY = frozenset("family butterfly dragonfly firefly assembly italy".split())
DETERMINERS = frozenset("a an the this that these those his her their its our your my".split())

_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def candidate_words(caption: str) -> list[str]:
    """The nouns and attribute words of `caption`, lower-cased, in order (repeats kept)."""
    words = _WORD.findall(caption.lower())
    kept = []
    for position, word in enumerate(words):
        previous = words[position - 1] if position else ""
        if _is_candidate(word, previous):
            kept.append(word)
    return kept


def _is_candidate(word: str, previous: str) -> bool:
    if word in ATTRIBUTE_WORDS:
        return True
    if word in FUNCTION_WORDS or len(word) < 3:
        return False
    if word.endswith("ly") and len(word) >= 6 and word not in NOUNS_ENDING_LY:
        return False
    if word.endswith("ed") and len(word) >= 5 and not word.endswith("eed"):
        return False
    if word.endswith("ing") and previous not in DETERMINERS and previous not in ATTRIBUTE_WORDS:
        return False
    return True


def captions_from_llava_json(path: str | Path) -> list[str]:
    """The assistant ("gpt") turns of a LLaVA data file: one string per turn.

    The file is read by `llava.train.llava_json.load_llava_json`, the reader training uses, so a record
    training would refuse is refused here too (`LlavaDataError` naming the file and the record).
    """
    from llava.train.llava_json import load_llava_json

    return [turn["value"] for record in load_llava_json(path) for turn in record["conversations"]
            if turn["from"] == "gpt"]


def count_candidate_words(captions: Iterable[str]) -> Counter[str]:
    """How often each candidate word occurs over all `captions`."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(candidate_words(caption))
    return counts


def build_vocabulary(counts: Counter[str], *, min_count: int = 5, max_words: int | None = None,
                     extra_words: Iterable[str] = ()) -> list[str]:
    """Words seen at least `min_count` times, most frequent first (ties alphabetical), at most
    `max_words` of them, followed by the `extra_words` not already present (always kept).
    """
    if min_count < 1:
        raise ValueError(f"--min-count must be >= 1, got {min_count}")
    if max_words is not None and max_words < 0:
        raise ValueError(f"--max-words must be >= 0, got {max_words}")
    frequent = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_words is not None:
        frequent = frequent[:max_words]
    vocabulary = list(frequent)
    seen = set(vocabulary)
    for word in extra_words:
        if word not in seen:
            vocabulary.append(word)
            seen.add(word)
    return vocabulary


def read_word_list(path: str | Path) -> list[str]:
    """Words of a text file, one per line; blank lines and lines starting with '#' are ignored.

    Duplicates raise ValueError naming the file and line, so word ids stay unambiguous.
    """
    path = Path(path)
    words: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word in first_line:
            raise ValueError(f"{path}:{number}: duplicate word {word!r} (first on line {first_line[word]})")
        first_line[word] = number
        words.append(word)
    if not words:
        raise ValueError(f"{path}: no words")
    return words


def write_word_list(words: Iterable[str], path: str | Path) -> None:
    """One word per line; the line order defines the word ids used by the label files."""
    Path(path).write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
