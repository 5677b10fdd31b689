"""Blocked-term filter for prompts: disguise-aware matching of Chinese and English term lists.

Text and terms are folded the same way: NFKD, combining marks and invisible format characters
(zero-width spaces, soft hyphens, bidi marks) dropped, NFKC, casefold. That sees through case,
full-width letters ("Ｎｕｄｅ"), accents, and the compatibility look-alikes NFKC maps (circled,
mathematical and ligature letters). Matching then runs on the stream of letters and digits
only, so spaces and punctuation inserted between letters ("n.u.d.e", "n u d e", "色 情",
"色*情") do not hide a term.

Stripping separators also joins innocent neighbours, so three rules keep false positives down:

- Separators inside a match must look like a disguise: every piece between them a single
  letter ("p e n i s", "色 情"), or no whitespace in them ("pe.nis", "nu-de"). Ordinary words
  that happen to spell a term ("the pen is red") do not match. Where the listed term itself has
  a space ("child porn"), any separator may stand there, and each of its words is judged on
  its own ("make a b o m b").

- Terms written in ASCII match only where they line up with word boundaries of the original
  text: the character before the match is not an ASCII letter or digit, and the one after is
  not either, or the match is followed by a plain inflection ("nudes", "raped") and then a
  boundary. So "Scunthorpe", "therapist", "Essex" and "a manu de..." stay clean, while
  "N.U.D.E" and "a nude" do not. Compounds with no boundary ("childporn") are caught only when
  listed as a phrase ("child porn" matches both "child porn" and "childporn").
- Chinese has no word boundaries, so CJK terms match anywhere in the stream, but never across
  Chinese clause punctuation (，。、；：！？) or a line break: "特色，情侣" does not make "色情".
  Genuine words that contain a term ("血腥玛丽", "露点温度") belong in the allowed list.

Every blocked term has a category (CATEGORIES): the shipped lists are one file per category and
language (`terrorism.en.txt`, `terrorism.zh.txt`), and an operator's file puts its terms under
`[category]` header lines (terms before any header are `custom`). Each match carries its
category to the audit log, and IMAGESYNTH_SAFETY_CATEGORIES_OFF switches whole categories off
(never `minors`).

An allowed phrase (shipped list plus IMAGESYNTH_ALLOWED_TERMS_FILE) suppresses every blocked
match that lies inside one of its occurrences; allowing a term itself turns that term off.
Negative prompts are checked too, except for the terms in the shipped negative_ok.txt, which
clients routinely put there to steer away from ("nsfw, nude, lowres").
"""

from __future__ import annotations

import itertools
import logging
import unicodedata
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from imagesynth.config import Settings
from imagesynth.errors import ImageSynthError

log = logging.getLogger("imagesynth.safety")

# The shipped categories, each in `<category>.en.txt` and `<category>.zh.txt`.
CATEGORIES: dict[str, str] = {
    "sexual": "sexually explicit content",
    "minors": "sexual content involving minors",
    "sexual_violence": "rape, sexual assault",
    "gore": "graphic violence, mutilation",
    "terrorism": "terrorist attacks, making bombs, explosives or untraceable guns",
    "hate": "slurs, calls to hate or kill a group",
    "self_harm": "self-harm, suicide methods, eating-disorder promotion",
    "drugs": "illegal drugs and their trade",
    "extremism": "extremist symbols, salutes and slogans",
}
LANGUAGES = ("en", "zh")
# Never switched off: no deployment has a use for sexual content involving minors.
ALWAYS_ON = frozenset({"minors"})
CUSTOM = "custom"  # the category of an operator's terms listed before any [category] header
DEFAULT_ALLOWED = "allowed.txt"
NEGATIVE_OK = "negative_ok.txt"

# Endings a boundary-aligned ASCII match may carry: "nudes", "raped", "beheadings".
SUFFIXES = frozenset({"s", "es", "d", "ed", "ing", "ings", "er", "ers"})
# Where a CJK match must not reach across (checked on the original characters, before NFKC
# turns the full-width comma into an ASCII one). Line breaks split for every term.
HARD_BREAKS = frozenset("，。、；：！？\n\r\u2028\u2029")
_DROPPED = frozenset({"Mn", "Me", "Cf"})
_BREAK = "\x00"  # stands for a hard break in the letter stream; no term contains it


class TermsFileError(ImageSynthError):
    """A blocked- or allowed-terms file cannot be read."""


class CategoryError(ImageSynthError):
    """IMAGESYNTH_SAFETY_CATEGORIES_OFF names a category that cannot be switched off."""


def category_name(text: str) -> str:
    """A category as written by an operator or a guard model, in the form used here:
    lowercase, runs of other characters as "_" ("Suicide & Self-Harm" -> "suicide_self_harm")."""
    words = "".join(c if c.isalnum() else " " for c in text.casefold()).split()
    return "_".join(words)


def parse_categories(text: str) -> frozenset[str]:
    """A comma-separated list of categories (IMAGESYNTH_SAFETY_CATEGORIES_OFF), normalized.
    Raises CategoryError for a category that is always on."""
    names = frozenset(n for n in (category_name(part) for part in text.split(",")) if n)
    refused = names & ALWAYS_ON
    if refused:
        raise CategoryError(f"category {', '.join(sorted(refused))} cannot be switched off")
    return names


@dataclass(frozen=True)
class Term:
    """One listed term: as written, where it came from, and its folded letter stream."""

    text: str
    source: str
    key: str
    bounded: bool  # ASCII: must align with word boundaries
    breaks: frozenset[int] = frozenset()  # positions in `key` where the term has a space
    category: str = CUSTOM


@dataclass(frozen=True)
class Match:
    """A blocked term found in a text: the rule (term as listed), its list, its category, and
    where."""

    rule: str
    source: str
    start: int
    end: int
    category: str = CUSTOM


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    """One character folded for matching: "" for marks and invisible characters, else its
    NFKC casefolded form without accents (possibly several characters: "ﬁ" -> "fi")."""
    decomposed = unicodedata.normalize("NFKD", ch.casefold())
    kept = "".join(c for c in decomposed if unicodedata.category(c) not in _DROPPED)
    # Casefold on both sides: "İ" folds to i + a combining dot, "𝐍" decomposes to "N".
    return unicodedata.normalize("NFKC", kept).casefold()


def fold(text: str) -> str:
    """`text` folded for matching (see fold_char)."""
    return "".join(fold_char(ch) for ch in text)


def _key(term: str) -> tuple[str, frozenset[int]]:
    """The folded letters of `term`, and where between them it has spaces or punctuation."""
    letters: list[str] = []
    breaks: set[int] = set()
    for c in fold(term):
        if c.isalnum():
            letters.append(c)
        elif letters:
            breaks.add(len(letters))
    return "".join(letters), frozenset(b for b in breaks if b < len(letters))


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


class _Stream:
    """A text folded to its letters and digits, remembering where each came from."""

    def __init__(self, text: str) -> None:
        chars: list[str] = []  # folded characters, invisible ones dropped
        origin: list[int] = []  # index in `text` of each folded character
        for i, ch in enumerate(text):
            folded = _BREAK if ch in HARD_BREAKS else fold_char(ch)
            chars.extend(folded)
            origin.extend([i] * len(folded))
        self.chars = chars
        self.origin = origin
        self.at = [i for i, c in enumerate(chars) if c.isalnum() or c == _BREAK]
        self.letters = "".join(chars[i] for i in self.at)

    def find(self, term: Term) -> Iterator[tuple[int, int]]:
        """Letter-stream spans [a, b) where `term` matches, by the rules in the docstring."""
        start = self.letters.find(term.key)
        while start >= 0:
            end = start + len(term.key)
            if self._disguise_only(term, start, end) and (
                not term.bounded or self._aligned(start, end)
            ):
                yield start, end
            start = self.letters.find(term.key, start + 1)

    def _gap(self, k: int) -> str:
        """What separates letters k-1 and k of the stream ("" when they are adjacent)."""
        return "".join(self.chars[self.at[k - 1] + 1 : self.at[k]])

    def _disguise_only(self, term: Term, start: int, end: int) -> bool:
        # Word by word of the term: "make a b o m b" spells out one word of "make a bomb".
        cuts = [0, *sorted(term.breaks), end - start]
        for a, b in itertools.pairwise(cuts):
            inner = range(start + a + 1, start + b)
            extra = [k for k in inner if self._gap(k)]
            if not (
                not extra
                or len(extra) == len(inner)  # every letter set apart: "n u d e"
                or not any(c.isspace() for k in extra for c in self._gap(k))  # "nu.de"
            ):
                return False
        return True

    def _aligned(self, start: int, end: int) -> bool:
        first, last = self.at[start], self.at[end - 1]
        if first > 0 and _ascii_alnum(self.chars[first - 1]):
            return False
        tail = last + 1
        while tail < len(self.chars) and _ascii_alnum(self.chars[tail]):
            tail += 1
        return tail == last + 1 or "".join(self.chars[last + 1 : tail]) in SUFFIXES

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's [start, end) for letter-stream span [start, end)."""
        return self.origin[self.at[start]], self.origin[self.at[end - 1]] + 1


def parse_terms(lines: Iterable[str], source: str, category: str = CUSTOM) -> list[Term]:
    """Terms from a list: one per line, `#` starts a comment, blank lines ignored, a
    `[category]` line puts the terms after it in that category (else `category`). A line that
    folds to no letters or digits is skipped with a warning."""
    terms = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith("[") and text.endswith("]") and category_name(text[1:-1]):
            category = category_name(text[1:-1])
            continue
        key, breaks = _key(text)
        if not key:
            log.warning("%s:%d: term %r has no letters or digits; ignored", source, number, text)
            continue
        terms.append(
            Term(
                text=text,
                source=source,
                key=key,
                bounded=key.isascii(),
                breaks=breaks,
                category=category,
            )
        )
    return terms


def _shipped(name: str, category: str = CUSTOM) -> list[Term]:
    lines = resources.files("imagesynth.safety").joinpath("terms", name).read_text("utf-8")
    return parse_terms(lines.splitlines(), f"default:{name}", category)


def _read(path: Path) -> list[Term]:
    try:
        text = path.expanduser().read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TermsFileError(f"cannot read terms file {path}: {exc}") from exc
    return parse_terms(text.splitlines(), str(path))


def shipped_blocked() -> list[Term]:
    """Every shipped blocked term, each in its category."""
    return [
        term
        for category in CATEGORIES
        for language in LANGUAGES
        for term in _shipped(f"{category}.{language}.txt", category)
    ]


class TermFilter:
    """Finds blocked terms in prompts. Immutable once built, so safe to share across threads."""

    def __init__(
        self,
        blocked: Iterable[Term],
        allowed: Iterable[Term] = (),
        negative_ok: Iterable[Term] = (),
        *,
        categories_off: Collection[str] = (),
    ) -> None:
        """categories_off: categories whose terms are not checked (see parse_categories)."""
        off = frozenset(categories_off)
        if off & ALWAYS_ON:
            raise CategoryError(f"category {', '.join(sorted(off & ALWAYS_ON))} is always on")
        self.categories_off = off
        self.blocked = tuple(t for t in blocked if t.category not in off)
        self.allowed = tuple(allowed)
        self.negative_ok = frozenset(t.key for t in negative_ok)

    @classmethod
    def from_files(
        cls,
        blocked_file: Path | None = None,
        allowed_file: Path | None = None,
        *,
        defaults: bool = True,
        categories_off: Collection[str] = (),
    ) -> TermFilter:
        """The shipped lists (unless `defaults` is False) plus the operator's files."""
        blocked: list[Term] = []
        allowed: list[Term] = []
        negative_ok: list[Term] = []
        if defaults:
            blocked += shipped_blocked()
            allowed += _shipped(DEFAULT_ALLOWED)
            negative_ok += _shipped(NEGATIVE_OK)
        if blocked_file is not None:
            blocked += _read(blocked_file)
        if allowed_file is not None:
            allowed += _read(allowed_file)
        known = set(CATEGORIES) | {t.category for t in blocked}
        for name in sorted(set(categories_off) - known):
            # Not an error: guard models have categories of their own (safety/guard.py).
            log.warning("IMAGESYNTH_SAFETY_CATEGORIES_OFF: no blocked term is in %r", name)
        return cls(blocked, allowed, negative_ok, categories_off=categories_off)

    def describe(self) -> str:
        categories = sorted({t.category for t in self.blocked})
        off = f", off: {', '.join(sorted(self.categories_off))}" if self.categories_off else ""
        return (
            f"prompt filter: {len(self.blocked)} blocked terms in {len(categories)} categories "
            f"({', '.join(categories)}{off}), {len(self.allowed)} allowed phrases"
        )

    def check(self, text: str, *, negative: bool = False) -> Match | None:
        """The first blocked term in `text` (by position), or None when it is clean.
        `negative`: `text` is a negative prompt, where negative_ok terms are fine."""
        if not text:
            return None
        stream = _Stream(text)
        covered = [span for term in self.allowed for span in stream.find(term)]
        best: tuple[int, int, Term] | None = None
        for term in self.blocked:
            if negative and term.key in self.negative_ok:
                continue
            for start, end in stream.find(term):
                if any(a <= start and end <= b for a, b in covered):
                    continue
                if best is None or start < best[0]:
                    best = (start, end, term)
                break
        if best is None:
            return None
        start, end = stream.span(best[0], best[1])
        term = best[2]
        return Match(
            rule=term.text, source=term.source, start=start, end=end, category=term.category
        )

    def screen(self, text: str) -> str | None:
        """Why `text` must not be used (its first blocked term), or None: the shape of
        prompts.build_rewriter's `screen`, so a rewrite cannot bring in a blocked term."""
        match = self.check(text)
        return None if match is None else f"blocked term {match.rule!r}"


def build_term_filter(settings: Settings) -> TermFilter:
    """The shipped lists plus IMAGESYNTH_BLOCKED_TERMS_FILE / IMAGESYNTH_ALLOWED_TERMS_FILE,
    less IMAGESYNTH_SAFETY_CATEGORIES_OFF. Raises TermsFileError or CategoryError (at startup)
    for a file that cannot be read or a category that cannot be switched off."""
    return TermFilter.from_files(
        settings.blocked_terms_file,
        settings.allowed_terms_file,
        categories_off=parse_categories(settings.safety_categories_off),
    )
