"""A cheap "is this English?" check: T5 (the v1.1.0 text encoder) reads English only.

Two signals, no model: the share of letters that are ASCII (catches non-Latin scripts and
heavily accented text), and, for captions long enough to judge, whether any common English
function word appears (catches Latin-script languages such as Spanish or German).
"""

from __future__ import annotations

import re

MIN_ASCII_LETTER_SHARE = 0.9
MIN_WORDS_FOR_VOCABULARY_CHECK = 8
_COMMON_WORDS = frozenset(
    "a an the is are was were be of in on at to and or with by for from as it its this that these "
    "there while into over through he she they his her their which who".split()
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def is_english(text: str) -> bool:
    """False when `text` is empty, mostly in a non-Latin script, or long and free of English function words."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    if ascii_share < MIN_ASCII_LETTER_SHARE:
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) >= MIN_WORDS_FOR_VOCABULARY_CHECK and not any(w in _COMMON_WORDS for w in words):
        return False
    return True
