"""A cheap "is this English?" check: T5 (the v1.1.0 text encoder) reads English only.

Two signals, no model:
- script: the share of letters that are Latin. Accented Latin letters count (an English caption
  may name "São Paulo" or "crème brûlée"); Chinese, Cyrillic, Arabic and other scripts do not.
- function words: Latin-script languages (Spanish, French, German, ...) are recognised by their
  own articles, prepositions and conjunctions, which a sentence cannot avoid. A caption is only
  flagged when such words are frequent and outnumber English ones; captions without function
  words at all (keyword style: "Aerial drone footage: snowy mountains, golden hour") pass.
"""

from __future__ import annotations

import re
import unicodedata

MIN_LATIN_LETTER_SHARE = 0.8  # leaves room for a quoted foreign name or sign text
MIN_FOREIGN_FUNCTION_WORDS = 2
# Foreign function words must outnumber English ones this many times: an English caption may
# quote a name ("the Rio de la Plata", "Los Angeles and Las Vegas").
FOREIGN_TO_ENGLISH_RATIO = 2

_ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been being of in on at to and or but with by for from as it its this that "
    "these those there while into over through under onto he she they his her their which who whose "
    "has have not".split()
)
# Function words of common Latin-script languages. Words that are also English ("a", "in",
# "is", "no", "do", "per", "van", "par", "pendant", ...) are left out: they prove nothing.
_FOREIGN_FUNCTION_WORDS = frozenset(
    # Spanish
    "el la los las un una unos unas y del al por para con que es está están en se su sus mientras pero "
    "como muy sobre entre hacia desde lo "
    # French
    "le les une des du de et est sont dans avec sur pour qui au aux ce cette ces il elle ils elles "
    "tandis très à où "
    # German
    "der die das ein eine einen einem einer und ist sind mit auf dem den zu im von für nicht sich wird "
    "während über unter nach zwischen "
    # Italian
    "il lo gli della delle del nel nella sono che mentre sulla sul "
    # Portuguese
    "os uma dos das na é "
    # Dutch
    "het een zijn wordt naar op "
    # Indonesian / Malay, Turkish
    "yang dan dengan ke dari ini itu sebuah seorang pada untuk bir ve ile bu".split()
) - _ENGLISH_FUNCTION_WORDS
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _is_latin(char: str) -> bool:
    return unicodedata.name(char, "").startswith("LATIN")


def is_english(text: str) -> bool:
    """False when `text` has no letters, is mostly in a non-Latin script, or reads as another
    Latin-script language (its function words far outnumber English ones)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(map(_is_latin, letters)) / len(letters) < MIN_LATIN_LETTER_SHARE:
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    english = sum(w in _ENGLISH_FUNCTION_WORDS for w in words)
    foreign = sum(w in _FOREIGN_FUNCTION_WORDS for w in words)
    return not (foreign >= MIN_FOREIGN_FUNCTION_WORDS and foreign > FOREIGN_TO_ENGLISH_RATIO * english)
