"""Per-key settings an operator sets with `imagesynth keys set` or the admin API.

Each value left unset falls back to the catalog's per-model default (or a service-wide
setting); a per-model override beats the key's "all models" override.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from imagesynth.accounts.money import to_micros
from imagesynth.errors import InvalidParameter

ALL_MODELS = "*"


@dataclass(frozen=True)
class ModelOverrides:
    rps: float | None = None  # submissions per second
    in_flight: int | None = None  # tasks RUNNING at once
    free_quota: int | None = None  # free images

    def merged(self, other: ModelOverrides) -> ModelOverrides:
        """These values, with other's where other sets them."""
        return ModelOverrides(
            **{
                f.name: getattr(other, f.name)
                if getattr(other, f.name) is not None
                else getattr(self, f.name)
                for f in fields(self)
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class KeySettings:
    free_tier_only: bool = False  # refuse work the free quota cannot cover (no paid use)
    monthly_cap_micros: int | None = None  # spending cap per calendar month
    max_pending: int | None = None  # tasks waiting per key; None: the service default
    models: dict[str, ModelOverrides] = field(default_factory=dict)  # by model name or "*"

    def for_model(self, model: str) -> ModelOverrides:
        default = self.models.get(ALL_MODELS, ModelOverrides())
        return default.merged(self.models.get(model, ModelOverrides()))

    def with_overrides(self, model: str | None, overrides: ModelOverrides) -> KeySettings:
        name = model or ALL_MODELS
        models = dict(self.models)
        models[name] = models.get(name, ModelOverrides()).merged(overrides)
        return replace(self, models=models)

    def to_json(self) -> dict[str, Any]:
        return {
            "free_tier_only": self.free_tier_only,
            "monthly_cap_micros": self.monthly_cap_micros,
            "max_pending": self.max_pending,
            "models": {name: o.to_json() for name, o in self.models.items() if o.to_json()},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> KeySettings:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            free_tier_only=bool(data.get("free_tier_only", False)),
            monthly_cap_micros=data.get("monthly_cap_micros"),
            max_pending=data.get("max_pending"),
            models={
                name: ModelOverrides(**values) for name, values in data.get("models", {}).items()
            },
        )


# The range of each setting, refused outside it when it is set (so by the admin API and the
# CLI alike), and documented in the README: every value fits what it reaches later, a 32-bit
# INTEGER column on PostgreSQL (in_flight, free_quota are copied onto each task), a float
# (rps, in the rate buckets) or an integer count of micro-units (monthly_cap).
RPS_MAX = 10_000.0
IN_FLIGHT_MAX = 10_000
FREE_QUOTA_MAX = 1_000_000_000
MAX_PENDING_MAX = 1_000_000
MONTHLY_CAP_MAX = 1_000_000_000  # in the catalog's currency

CHANGE_FIELDS = (
    "free_tier_only",
    "monthly_cap",
    "max_pending",
    "model",
    "rps",
    "in_flight",
    "free_quota",
)


def apply_changes(settings: KeySettings, changes: Mapping[str, Any]) -> KeySettings:
    """Settings with an operator's changes (from `keys set` or the admin API's PATCH).

    Absent fields stay as they are; null clears (the cap, or a per-model override, which then
    falls back to the catalog). rps / in_flight / free_quota apply to `model`, or to every
    model when no model is named. Raises InvalidParameter naming the bad field."""
    unknown = set(changes) - set(CHANGE_FIELDS)
    if unknown:
        raise InvalidParameter(f"Unknown fields {sorted(unknown)}; known: {list(CHANGE_FIELDS)}")
    out = settings
    if "free_tier_only" in changes:
        out = replace(out, free_tier_only=_typed(changes, "free_tier_only", bool))
    if "monthly_cap" in changes:
        out = replace(out, monthly_cap_micros=_monthly_cap(changes["monthly_cap"]))
    if "max_pending" in changes:
        out = replace(out, max_pending=_bounded(changes, "max_pending", int, 1, MAX_PENDING_MAX))
    model = changes.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidParameter(f"model must be a model name; got {model!r}")
    per_model = {k: changes[k] for k in ("rps", "in_flight", "free_quota") if k in changes}
    if per_model:
        name = model or ALL_MODELS
        current = out.models.get(name, ModelOverrides())
        updated = ModelOverrides(
            rps=_bounded(per_model, "rps", float, 0, RPS_MAX, low_open=True)
            if "rps" in per_model
            else current.rps,
            in_flight=_bounded(per_model, "in_flight", int, 1, IN_FLIGHT_MAX)
            if "in_flight" in per_model
            else current.in_flight,
            free_quota=_bounded(per_model, "free_quota", int, 0, FREE_QUOTA_MAX)
            if "free_quota" in per_model
            else current.free_quota,
        )
        models = dict(out.models)
        models[name] = updated
        out = replace(out, models=models)
    return out


def _typed(changes: Mapping[str, Any], name: str, kind: type) -> Any:
    value = changes[name]
    if not isinstance(value, kind):
        raise InvalidParameter(f"{name} must be {kind.__name__}; got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """A value for a message, cut short: it may be a number of thousands of digits."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge integer"
    return text if len(text) <= 60 else text[:60] + "..."


def _monthly_cap(cap: Any) -> int | None:
    if cap is None:
        return None
    problem = f"monthly_cap must be an amount in [0, {MONTHLY_CAP_MAX}] or null; got {_shown(cap)}"
    if isinstance(cap, bool) or not isinstance(cap, int | float | str):
        raise InvalidParameter(problem)
    try:
        micros = to_micros(cap)
    except ValueError:
        raise InvalidParameter(problem) from None
    if micros > to_micros(MONTHLY_CAP_MAX):
        raise InvalidParameter(problem)
    return micros


def _bounded(
    changes: Mapping[str, Any],
    name: str,
    kind: type[int] | type[float],
    low: float,
    high: float,
    low_open: bool = False,
) -> Any | None:
    """changes[name] as `kind` within [low, high] (or (low, high]), or None to clear it."""
    value = changes[name]
    if value is None:
        return None
    number_ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
    # Compared before any conversion: float(10**400) itself raises; NaN is in no range.
    in_range = number_ok and (low < value if low_open else low <= value) and value <= high
    if isinstance(value, bool) or not in_range:
        opening = "(" if low_open else "["
        what = "an integer" if kind is int else "a number"
        raise InvalidParameter(
            f"{name} must be {what} in {opening}{low:.0f}, {high:.0f}] or null; got {_shown(value)}"
        )
    return kind(value)
