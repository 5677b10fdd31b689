"""What labelling costs per image: visible mark, invisible mark, PNG encode with the label.

    .venv/bin/python bench/bench_labels.py [--size 1024*1024] [--repeat 5]

Medians over `repeat` runs on a smooth photo-like image and on noise (the demo weights' output),
then PNG's compression levels side by side (time and size), which chose storage/png.py's level.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from imagesynth.domain import parse_size
from imagesynth.labels import invisible, visible
from imagesynth.labels.aigc import ImageLabel
from imagesynth.storage.png import COMPRESS_LEVEL, encode_png


def photo_like(width: int, height: int) -> Image.Image:
    cells = np.random.default_rng(0).integers(0, 256, (height // 64 + 2, width // 64 + 2, 3))
    base = Image.fromarray(cells.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    return base.filter(ImageFilter.GaussianBlur(4))


def noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024*1024")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    now = time.time()
    label = ImageLabel(
        "imagesynth", "task", "wan2.2-t2i-flash", 0, now, now, "a cat", "a cat", "", 1, 4, 4.0,
        width, height, visible_mark="AI生成", invisible_mark=True,
    )  # fmt: skip
    invisible.detect(noise(width, height))  # imports and warms up
    for name, make in (("photo-like", photo_like), ("noise", noise)):
        print(f"{name} {width}x{height}:")
        for step, ms in measure(make(width, height), label, args.repeat).items():
            print(f"  {step:<22} {ms:7.1f} ms")
    print(f"PNG compression levels (in use: {COMPRESS_LEVEL}):")
    for name, make in (("photo-like", photo_like), ("noise", noise)):
        image = make(width, height)
        for level in (0, 1, 3, 6, 9):

            def encode(level: int = level, image: Image.Image = image) -> int:
                buffer = io.BytesIO()
                image.save(buffer, format="PNG", compress_level=level)
                return buffer.tell()

            size = encode()
            ms = median_ms(encode, args.repeat)
            print(f"  {name:<10} level {level}: {ms:7.1f} ms  {size / 1e6:6.2f} MB")


def measure(image: Image.Image, label: ImageLabel, repeat: int) -> dict[str, float]:
    marked = visible.draw_mark(image, "AI生成")
    embedded = invisible.embed(marked)
    steps: dict[str, Callable[[], object]] = {
        "visible mark": lambda: visible.draw_mark(image, "AI生成"),
        "invisible embed": lambda: invisible.embed(marked),
        "PNG encode, no label": lambda: encode_png(embedded),
        "PNG encode, labelled": lambda: encode_png(embedded, label.text_chunks(), label.xmp()),
        "invisible detect": lambda: invisible.detect(embedded),
    }
    return {step: median_ms(fn, repeat) for step, fn in steps.items()}


if __name__ == "__main__":
    main()
