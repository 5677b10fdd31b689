"""Labels on real images: the visible mark, the invisible mark, the metadata label."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from imagesynth.catalog import Catalog, ModelSpec
from imagesynth.config import Settings
from imagesynth.domain import TaskStatus, parse_size
from imagesynth.labels import LabelError, font, invisible, visible
from imagesynth.labels.aigc import AI_SOURCE_TYPE, TC260_NS, read_label
from imagesynth.labels.font import font_path, load_font
from imagesynth.labels.inspect import inspect_file
from imagesynth.labels.labeler import Labeler
from imagesynth.storage.png import XMP_KEY
from imagesynth.tasks.models import Task
from imagesynth.worker.worker import image_label, mark_text

CATALOG = Catalog.load()


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields with gentle texture: what real generated images look like to the
    invisible mark (the demo pipelines' noise does not; see test_invisible_mark_on_noise)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
    base = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(base.filter(ImageFilter.GaussianBlur(4)), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    arr += (8 * np.sin(xx / 13.0) * np.cos(yy / 17.0))[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    return np.abs(x - y).max(axis=2) > 0


def inside(mask: np.ndarray, box: visible.Box) -> bool:
    outside = mask.copy()
    outside[box.top : box.bottom, box.left : box.right] = False
    return not outside.any()


def jpeg_half(image: Image.Image, quality: int = 80) -> Image.Image:
    """A 50% downscale saved as JPEG at `quality`, read back (what a re-share does)."""
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def allowed_extremes() -> set[tuple[str, int, int]]:
    """(mark text, width, height): every fixed size, and the smallest, largest and most
    elongated free sizes, of every catalog model."""
    found: set[tuple[str, int, int]] = set()
    for spec in CATALOG.models.values():
        text = mark_text(spec)
        if spec.sizes:
            found |= {(text, *parse_size(s)) for s in spec.sizes}
            continue
        lo, hi = spec.min_side, spec.max_side
        square = min(hi, int(spec.max_pixels**0.5))
        found |= {(text, lo, lo), (text, square, square)}
        long = min(hi, spec.max_pixels // lo)
        found |= {(text, lo, long), (text, long, lo)}
    return found


# -- font -------------------------------------------------------------------------------------


def glyph_mask(char: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> np.ndarray:
    canvas = Image.new("L", (80, 80), 0)
    ImageDraw.Draw(canvas).text((8, 4), char, font=font, fill=255)
    return np.asarray(canvas) > 127


def test_cjk_font_draws_real_glyphs() -> None:
    font = load_font(48)
    sheng, cheng = glyph_mask("生", font), glyph_mask("成", font)
    notdef = glyph_mask("\ue000", font)  # private use: no glyph, the font's notdef box
    assert sheng.sum() > 150 and cheng.sum() > 150
    assert (sheng ^ cheng).sum() > 150
    assert (sheng ^ notdef).sum() > 150 and (cheng ^ notdef).sum() > 150
    # The failure this guards against: a font without CJK draws the two alike (empty boxes).
    plain = ImageFont.load_default(48)
    assert (glyph_mask("生", plain) ^ glyph_mask("成", plain)).sum() < 50


# -- visible mark -----------------------------------------------------------------------------


def test_mark_text_follows_the_family() -> None:
    assert mark_text(CATALOG.get("qwen-image-plus")) == "Qwen-Image"
    assert mark_text(CATALOG.get("wan2.2-t2i-flash")) == "AI生成"
    assert mark_text(CATALOG.get("wanx-v1")) == "AI生成"
    spec = ModelSpec(name="custom", family="wan", watermark_text="Made by AI")
    assert mark_text(spec) == "Made by AI"


@pytest.mark.parametrize("text,width,height", sorted(allowed_extremes()))
def test_mark_is_legible_and_only_bottom_right(text: str, width: int, height: int) -> None:
    image = photo_like(width, height)
    marked = visible.draw_mark(image, text)
    box = visible.mark_box(width, height, text)
    assert (box.right, box.bottom) == (width, height)
    assert box.width < width / 2 and box.height < height / 4
    diff = changed(image, marked)
    assert inside(diff, box)
    rows = np.flatnonzero(diff.any(axis=1))
    assert rows[-1] - rows[0] + 1 >= 0.05 * min(width, height)  # text at least 5% high
    # Legible on any background: white text with a dark outline on both white and black.
    ink = visible.text_box(width, height, text)
    for background in ((255, 255, 255), (0, 0, 0)):
        drawn = visible.draw_mark(Image.new("RGB", (width, height), background), text)
        pixels = np.asarray(drawn.crop((ink.left, ink.top, ink.right, ink.bottom)).convert("L"))
        assert (pixels >= 225).sum() > 0.05 * pixels.size
        assert (pixels <= 90).sum() > 0.05 * pixels.size


# -- invisible mark ---------------------------------------------------------------------------


def test_vectorised_embed_is_the_packages_arithmetic() -> None:
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd
    from imwatermark.watermark import WatermarkDecoder

    frame = np.random.default_rng(1).uniform(0, 255, (64, 96))
    ours, theirs = frame.copy(), frame.copy()
    invisible._embed_class()().encode_frame(ours, invisible.SCALE)
    bits = [int(b) for b in invisible.BITS]
    EmbedDwtDctSvd(bits, wmLen=len(bits)).encode_frame(theirs, invisible.SCALE)
    assert np.abs(ours - theirs).max() < 1e-9
    # And the stock decoder reads what we embed.
    marked = invisible.embed(photo_like(512, 512))
    bgr = np.asarray(marked)[..., ::-1].copy()
    assert WatermarkDecoder("bytes", 64).decode(bgr, "dwtDctSvd") == invisible.PAYLOAD


@pytest.mark.parametrize("width,height,seed", [(1024, 1024, 0), (768, 512, 1), (512, 512, 2)])
def test_invisible_mark_survives_jpeg_and_downscale(width: int, height: int, seed: int) -> None:
    image = photo_like(width, height, seed)
    marked = invisible.embed(image)
    assert np.abs(np.asarray(marked, np.int16) - np.asarray(image, np.int16)).mean() < 2
    assert invisible.detect(marked) == invisible.Detection(True, 0, 1.0)
    half = jpeg_half(marked)
    found = invisible.detect(half)  # read at twice the file's size
    assert found.found and found.scale == 2.0, found
    back = invisible.detect(half.resize((width, height), Image.Resampling.BICUBIC))
    assert back.found and back.scale == 1.0, back
    assert not invisible.detect(image).found
    assert not invisible.detect(jpeg_half(image)).found


def test_invisible_mark_clips_instead_of_wrapping() -> None:
    # Saturated colours sit at the ends of the chroma range: the package's own encode wraps
    # them around (errors of 255); ours clips.
    image = Image.new("RGB", (512, 512), (0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 255, 511), fill=(255, 255, 0))
    marked = invisible.embed(image)
    assert np.abs(np.asarray(marked, np.int16) - np.asarray(image, np.int16)).max() < 40


def test_invisible_mark_on_noise() -> None:
    """The demo pipelines' images are noise: the mark is there, and survives JPEG q80 alone,
    but not a downscale, which averages noise (and the mark with it) away."""
    noise = Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    )
    marked = invisible.embed(noise)
    assert invisible.detect(marked).found
    buf = io.BytesIO()
    marked.save(buf, format="JPEG", quality=80)
    assert invisible.detect(Image.open(io.BytesIO(buf.getvalue()))).found
    assert not invisible.detect(jpeg_half(marked)).found


# -- metadata label and the labeler -----------------------------------------------------------


def make_task(model: str, size: str, *, watermark: bool, seed: int = 42, n: int = 1) -> Task:
    spec = CATALOG.get(model)
    params = spec.validate(
        prompt="一只猫 <on a mat> & more",
        negative_prompt="blurry",
        size=size,
        n=n,
        seed=seed,
        watermark=watermark,
    )
    return Task(
        id="0a1b2c3d-task",
        api_key_id="k1",
        model=model,
        params=params,
        status=TaskStatus.RUNNING,
        request_id="r1",
        created_at=1_760_000_000.0,
        actual_prompt="一只猫 <on a mat> & more, rewritten",
    )


def test_png_carries_the_label_and_parameters(tmp_path: Path) -> None:
    task = make_task("wan2.2-t2i-flash", "768*512", watermark=False, n=2)
    spec = CATALOG.get(task.model)
    labeler = Labeler(producer="example-ai")
    image = photo_like(768, 512)
    data = labeler.encode(image, image_label(labeler, image, task, spec, index=1))
    assert b"iTXt" + XMP_KEY.encode() + b"\x00\x00\x00" in data  # uncompressed iTXt, per XMP
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with Image.open(path) as image:
        label = read_label(image.info)
        assert TC260_NS in image.info[XMP_KEY]
    assert label.aigc == {
        "Label": "1",
        "ContentProducer": "example-ai",
        "ProduceID": "0a1b2c3d-task",
        "ReservedCode1": "",
        "ContentPropagator": "",
        "PropagateID": "",
        "ReservedCode2": "",
    }
    assert label.aigc_sources == ("XMP", "PNG text AIGC")
    assert label.digital_source_type == AI_SOURCE_TYPE
    p = label.parameters
    assert p is not None
    assert p["model"] == "wan2.2-t2i-flash" and p["task_id"] == "0a1b2c3d-task"
    assert p["prompt"] == "一只猫 <on a mat> & more"
    assert p["actual_prompt"] == "一只猫 <on a mat> & more, rewritten"
    assert p["negative_prompt"] == "blurry"
    assert (p["seed"], p["image_index"]) == (43, 1)  # image i uses seed + i
    assert (p["steps"], p["guidance"], p["size"]) == (spec.default_steps, 4.0, "768*512")
    assert p["created_at"] == "2025-10-09T08:53:20Z"
    assert p["visible_watermark"] is None and p["invisible_watermark"] is False

    report = inspect_file(path)
    assert report.ai_generated and report.detection is not None and not report.detection.found
    text = report.to_text()
    assert "Label=1 (AI-generated)" in text and "ProduceID: 0a1b2c3d-task" in text
    assert "seed: 43" in text and "invisible watermark: absent" in text
    assert json.loads(json.dumps(report.to_json()))["parameters"] == p


def test_watermark_changes_only_the_mark_box_even_with_the_invisible_mark() -> None:
    width, height = 1664, 928
    image = photo_like(width, height)
    labeler = Labeler(invisible=True)
    spec = CATALOG.get("qwen-image")
    images = []
    for watermark in (False, True):
        task = make_task("qwen-image", f"{width}*{height}", watermark=watermark)
        label = image_label(labeler, image, task, spec, 0)
        images.append(labeler.apply(image, label))
    box = visible.mark_box(width, height, "Qwen-Image")
    diff = changed(images[0], images[1])
    assert diff.sum() > 1000 and inside(diff, box)
    assert all(invisible.detect(im).found for im in images)


def test_labeler_from_settings() -> None:
    assert Labeler.from_settings(Settings(invisible_watermark=False)).invisible is False
    on = Labeler.from_settings(Settings(invisible_watermark=True, label_producer="acme"))
    assert on == Labeler(producer="acme", invisible=True)
    assert Labeler.from_settings(Settings()).invisible is invisible.available()


def test_missing_font_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    font_path.cache_clear()
    monkeypatch.setattr(font, "FONT_PACKAGE", "no_such_fonts")
    try:
        with pytest.raises(LabelError, match="no-such-fonts is not installed"):
            font_path()
    finally:
        font_path.cache_clear()


def test_missing_invisible_packages_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "plain.png"
    photo_like(512, 512).save(path)
    invisible._embed_class.cache_clear()
    monkeypatch.setitem(sys.modules, "pywt", None)  # import pywt now raises ImportError
    try:
        assert not invisible.available()
        with pytest.raises(LabelError, match="PyWavelets"):
            invisible.embed(photo_like(512, 512))
        with pytest.raises(LabelError, match="IMAGESYNTH_INVISIBLE_WATERMARK=true"):
            Labeler.from_settings(Settings(invisible_watermark=True))
        assert Labeler.from_settings(Settings()).invisible is False
        report = inspect_file(path)
        assert report.detection is None
        assert "invisible watermark: not checked (" in report.to_text()
    finally:
        invisible._embed_class.cache_clear()
