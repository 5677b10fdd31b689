"""Checks and clean-up for an LLM's rewrite before it becomes `actual_prompt`.

`accept(original, reply, max_chars=...)` strips chatter ("Here is the rewritten prompt:",
<think> blocks, code fences), then keeps the rewrite only if it is in the prompt's language
(by script: the share of CJK letters), keeps every quoted span of the prompt verbatim and in
quotes, and fits `max_chars` once cut at a sentence or word boundary that splits no quoted
span. Otherwise the original prompt is used, with a note saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from imagesynth.prompts.rewriter import Rewrite, fallback

Language = Literal["zh", "ja", "ko", "other"]

# Opening quote -> closing quote. Qwen-Image renders the text inside any of these.
_PAIRS = {"“": "”", '"': '"', "「": "」", "『": "』", "‘": "’", "'": "'"}
# Single quotes double as apostrophes ("Joe's", "Joe’s"): see _opens / _closes.
_SINGLE = {"'", "‘", "’"}

# Below CLEARLY_LATIN / above CLEARLY_CJK a prompt's script is taken as given; in between
# (mixed prompts such as "赛博朋克城市, neon lights, 8k") a rewrite in either script passes.
CLEARLY_LATIN = 0.1
CLEARLY_CJK = 0.5
_CJK_SIDE = 0.3  # where a rewrite counts as written in CJK

_SENTENCE_END = "。！？!?；;…"
_CLAUSE_END = "，,、：:"


@dataclass(frozen=True)
class Quote:
    """A quoted span: text[start:end] includes the quotation marks, `inner` excludes them."""

    start: int
    end: int
    inner: str


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _opens(text: str, i: int) -> bool:
    if text[i] not in _SINGLE:
        return True
    before = text[i - 1] if i > 0 else " "
    after = text[i + 1] if i + 1 < len(text) else " "
    return not _ascii_alnum(before) and not after.isspace()


def _closes(text: str, j: int) -> bool:
    if text[j] not in _SINGLE:
        return True
    before = text[j - 1]
    after = text[j + 1] if j + 1 < len(text) else " "
    return not before.isspace() and not _ascii_alnum(after)


def quoted_spans(text: str) -> list[Quote]:
    """The quoted spans of `text`, outermost only, left to right; unclosed quotes are ignored.

    Straight and curly single quotes count only where they cannot be apostrophes: an opening
    one not after a letter, a closing one not before a letter ("a sign 'Joe's Diner'")."""
    spans: list[Quote] = []
    i, n = 0, len(text)
    while i < n:
        close = _PAIRS.get(text[i])
        if close is None or not _opens(text, i):
            i += 1
            continue
        j = i + 1
        while j < n and not (text[j] == close and _closes(text, j)):
            j += 1
        if j >= n:
            i += 1
            continue
        if text[i + 1 : j].strip():
            spans.append(Quote(i, j + 1, text[i + 1 : j]))
        i = j + 1
    return spans


def _unquoted(text: str) -> str:
    out, last = [], 0
    for q in quoted_spans(text):
        out.append(text[last : q.start])
        last = q.end
    out.append(text[last:])
    return " ".join(out)


def _is_han(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x2FA1F
    )


def _is_kana(cp: int) -> bool:
    return 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9F


def _is_hangul(cp: int) -> bool:
    return 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F


@dataclass(frozen=True)
class Script:
    """Letter counts outside quoted spans: `cjk_ratio` is CJK letters / all letters (None when
    there are no letters), `language` the CJK language when CJK dominates, else "other"."""

    cjk_ratio: float | None
    language: Language


def script_of(text: str) -> Script:
    han = kana = hangul = other = 0
    for ch in _unquoted(text):
        if not ch.isalpha():
            continue
        cp = ord(ch)
        if _is_han(cp):
            han += 1
        elif _is_kana(cp):
            kana += 1
        elif _is_hangul(cp):
            hangul += 1
        else:
            other += 1
    cjk = han + kana + hangul
    if cjk + other == 0:
        return Script(None, "other")
    ratio = cjk / (cjk + other)
    if ratio < _CJK_SIDE:
        return Script(ratio, "other")
    if hangul > han + kana:
        return Script(ratio, "ko")
    if kana * 10 > cjk:  # Japanese prose is ~40-70% kana; Chinese has none
        return Script(ratio, "ja")
    return Script(ratio, "zh")


def detect_language(text: str) -> Language:
    """The language whose script dominates `text` outside quoted spans: "zh", "ja" or "ko",
    else "other"."""
    return script_of(text).language


def language_mismatch(original: str, rewrite: str) -> str | None:
    """Why `rewrite` is not in the language of `original`, or None. Compares scripts, not
    languages: an English prompt rewritten in French passes; Chinese rewritten in English or
    Japanese does not. A mixed prompt accepts either script."""
    src, out = script_of(original), script_of(rewrite)
    if src.cjk_ratio is None or out.cjk_ratio is None:
        return None if src.cjk_ratio is None else "the rewrite has no words outside quotes"
    if src.cjk_ratio >= CLEARLY_CJK and out.language != src.language:
        return f"the prompt is in {_NAMES[src.language]}, the rewrite in {_NAMES[out.language]}"
    if src.cjk_ratio <= CLEARLY_LATIN and out.language != "other":
        return f"the prompt is in {_NAMES['other']}, the rewrite in {_NAMES[out.language]}"
    return None


_NAMES: dict[Language, str] = {
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "other": "a non-CJK script",
}


def missing_quotes(original: str, rewrite: str) -> list[int]:
    """1-based numbers of the prompt's quoted spans that the rewrite does not carry verbatim
    inside quotation marks (any style)."""
    kept = {q.inner.strip() for q in quoted_spans(rewrite)}
    return [n for n, q in enumerate(quoted_spans(original), start=1) if q.inner.strip() not in kept]


def _cut_ok_sentence(text: str, p: int) -> bool:
    prev = text[p - 1]
    if prev in _SENTENCE_END:
        return True
    return prev == "." and (p == len(text) or text[p].isspace())


def _cut_ok_clause(text: str, p: int) -> bool:
    return text[p - 1] in _CLAUSE_END


def _cut_ok_word(text: str, p: int) -> bool:
    # Anywhere but inside an ASCII word; between two CJK characters is a word gap.
    return p == len(text) or not (_ascii_alnum(text[p - 1]) and _ascii_alnum(text[p]))


def truncate(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters at the last sentence end, else clause
    end, else word gap in the second half of the allowance, never inside a quoted span."""
    if len(text) <= max_chars:
        return text
    quotes = quoted_spans(text)

    def outside(p: int) -> bool:
        return not any(q.start < p < q.end for q in quotes)

    low = max(1, max_chars // 2)
    cut = None
    for ok in (_cut_ok_sentence, _cut_ok_clause, _cut_ok_word):
        cut = next((p for p in range(max_chars, low - 1, -1) if outside(p) and ok(text, p)), None)
        if cut is not None:
            break
    if cut is None:  # one long quoted span or word: cut before it
        cut = next((p for p in range(max_chars, 0, -1) if outside(p)), max_chars)
    return text[:cut].rstrip(" \t\n" + _CLAUSE_END + "-–—")


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
_LEAD_IN = re.compile(
    r"""^\s*(?:
        (?:sure|okay|ok|certainly|of\ course|absolutely|alright)\b[^\n:：]{0,80}[:：]
      | here(?:'s|’s|\ is|\ are)\b[^\n:：]{0,60}
            \b(?:prompt|description|version|rewrite)\b[^\n:：]{0,20}[:：]
      | (?:the\ )?(?:rewritten|improved|enhanced|expanded|refined|final|new|revised)
            \ (?:image\ )?(?:prompt|description)[^\n:：]{0,20}[:：]
      | (?:image\ )?prompt\s*[:：]
      | (?:好的|当然|没问题)[^\n:：]{0,40}[:：]
      | (?:以下是|下面是|这是)[^\n:：]{0,30}[:：]
      | (?:改写|扩写|优化|润色)后的(?:提示词|描述)[^\n:：]{0,10}[:：]
      | 提示词\s*[:：]
    )\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_TRAILER = re.compile(
    r"^\s*(?:notes?\s*[:：]|explanation\s*[:：]|this\ (?:prompt|version|description|rewrite)\b"
    r"|i\ (?:have|'ve|’ve)\b|let\ me\ know\b|hope\ this\b|feel\ free\b"
    r"|说明[:：]|注[:：]|注意[:：]|希望|如果需要|如需)",
    re.IGNORECASE | re.VERBOSE,
)


def strip_chatter(reply: str) -> str:
    """The prompt inside an LLM reply: without <think> blocks, special tokens, code fences,
    lead-ins ("Sure! Here is the rewritten prompt:", "以下是改写后的提示词："), trailing
    remarks ("Note: ...") or quotation marks wrapped around the whole reply."""
    text = _THINK.sub("", reply)
    text = _SPECIAL.sub("", text)
    text = _FENCE.sub("", text)
    while m := _LEAD_IN.match(text):
        text = text[m.end() :]
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    while len(paragraphs) > 1 and _TRAILER.match(paragraphs[-1]):
        paragraphs.pop()
    text = "\n".join(line.strip() for p in paragraphs for line in p.splitlines() if line.strip())
    quotes = quoted_spans(text)
    if len(quotes) == 1 and quotes[0].start == 0 and quotes[0].end == len(text):
        text = quotes[0].inner.strip()
    return text


def accept(original: str, reply: str, *, max_chars: int) -> Rewrite:
    """The rewrite to use for `original` given an LLM's `reply`, or the original with a note
    when the reply fails a check. Never raises."""
    text = strip_chatter(reply)
    if not text:
        return fallback(original, "rewrite rejected: empty reply")
    if "\ufffd" in text:
        return fallback(original, "rewrite rejected: the reply has undecodable characters")
    if reason := language_mismatch(original, text):
        return fallback(original, f"rewrite rejected: {reason}")
    note = None
    if len(text) > max_chars:
        before = len(text)
        text = truncate(text, max_chars)
        note = f"rewrite cut from {before} to {len(text)} characters (limit {max_chars})"
    if missing := missing_quotes(original, text):
        which = ", ".join(f"#{n}" for n in missing)
        return fallback(original, f"rewrite rejected: quoted text {which} not kept verbatim")
    if text == original.strip():
        return Rewrite(text=original, rewritten=False, note="the rewriter kept the prompt as is")
    return Rewrite(text=text, rewritten=True, note=note)
