"""What a client may send to ``/infer/{model}``: the documented parameters, their types and
bounds. Nothing else reaches the pipeline: the keys the pipeline uses internally are set by
the app, never by a request.

Documented parameters (README, "Request parameters"):

* ``foreground``, ``background``: voxel indices ``[[i, j(, k)], ...]``, all points so far in
  the order placed; the first ``margin_points`` foreground points are the interior margin
  points. At most :data:`MAX_MARGIN_POINTS` margin points and
  :data:`MAX_REFINEMENT_CLICKS` refinement clicks (later foreground points and all
  background points) per request: a stateless request recomputes up to
  ``(f + 1) * (b + 1)`` refinement states, and these bounds keep the worst one inside the
  time budget (:mod:`lib.infers.budget`).
* ``margin_points``: how many leading foreground points are margin points, 2 to
  :data:`MAX_MARGIN_POINTS`.
* ``lamda``, ``sigma``: the graph cut's weight and intensity scale, within
  :data:`LAMDA_RANGE` and :data:`SIGMA_RANGE`.
* ``slice_axis`` (2D model on a volume): 0, 1 or 2.
* ``result_extension``, ``result_dtype``, ``result_compress``: the answer's file format.
* ``device``: ``cpu`` or ``cuda[:N]`` where present.

Keys MONAI Label clients send that MIDeepSeg does not use (:data:`IGNORED_KEYS`) are
dropped; any other key is refused, naming it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from lib.transforms.validation import InvalidInputError

MAX_MARGIN_POINTS = 16
MAX_REFINEMENT_CLICKS = {2: 40, 3: 16}
LAMDA_RANGE = (0.0, 50.0)
SIGMA_RANGE = (1e-3, 10.0)
RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
RESULT_DTYPES = ("uint8",)  # the mask is 0/1; a 2D PNG answer cannot hold more than 16 bits
# Sent by Slicer / OHIF / MONAILabelClient, not used here: "label" is Slicer's segment name
# (a mask to start from is the multipart upload of the same name, never a parameter).
IGNORED_KEYS = ("label", "label_info", "client_id", "restore_label_idx", "description", "timeout")
POINT_KEYS = ("foreground", "background")


def checked_infer_params(params: Mapping[str, Any], dimension: int, default_margin_points: int) -> dict[str, Any]:
    """The documented parameters of ``params``, checked; everything else refused or dropped.

    Args:
        params: the request's parameters as the client sent them (JSON values).
        dimension: the model's (2 or 3); a 2D model also takes 3D points on one slice.
        default_margin_points: the model's number of margin points when not given.

    Returns:
        a new dict with the documented keys present in ``params`` (points as given: their
        coordinates are checked against the image later, by the pipeline).

    Raises:
        InvalidInputError: an unknown key, a wrong type or a value out of its range, named.
    """
    if not isinstance(params, Mapping):
        raise InvalidInputError(f"params: expected a JSON object, got {type(params).__name__}")
    unknown = sorted(str(k) for k in params if k not in CHECKS and k not in IGNORED_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown parameter(s) {unknown}: accepted are {sorted(CHECKS)}")
    out = {key: CHECKS[key](params[key], key) for key in CHECKS if key in params}
    margin = out.get("margin_points", default_margin_points)
    foreground, background = (_count(params.get(k)) for k in POINT_KEYS)
    clicks = max(0, foreground - margin) + background
    limit = MAX_REFINEMENT_CLICKS[dimension]
    if clicks > limit:
        raise InvalidInputError(
            f"foreground/background: {clicks} refinement clicks, at most {limit} per request for the {dimension}D model"
        )
    return out


def _count(points: Any) -> int:
    return len(points) if isinstance(points, list) else 0


def _points(value: Any, name: str) -> list:
    """A JSON list of points, each a list of 2 or 3 values, at most :data:`MAX_MARGIN_POINTS`
    plus the larger refinement limit (the model's own limit is checked on the counts); the
    values are checked against the image later, by the pipeline."""
    if not isinstance(value, list):
        raise InvalidInputError(f"{name}: expected a list of points [[i, j(, k)], ...], got {type(value).__name__}")
    limit = MAX_MARGIN_POINTS + max(MAX_REFINEMENT_CLICKS.values())
    if len(value) > limit:
        raise InvalidInputError(f"{name}: {len(value)} points, at most {limit} per request")
    for point in value:
        if not isinstance(point, list) or not 2 <= len(point) <= 3:
            raise InvalidInputError(f"{name}: each point must be a list of 2 or 3 voxel indices, got {point!r}"[:300])
    return value


def _number(value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
    """A finite number (or numeric string, as Slicer's option fields send them) in range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}"[:300]) from None
    if not math.isfinite(number) or number < low or number > high or (low_open and number == low):
        raise InvalidInputError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}"[:300])
    return number


def _integer(value: Any, name: str, low: int, high: int) -> int:
    number = _number(value, name, low, high)
    if number != int(number):
        raise InvalidInputError(f"{name} must be an integer in [{low}, {high}], got {value!r}"[:300])
    return int(number)


def _choice(choices: tuple[str, ...]):
    def check(value: Any, name: str) -> str:
        if value not in choices:
            raise InvalidInputError(f"{name} must be one of {list(choices)}, got {value!r}"[:300])
        return value

    return check


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false", 0, 1):
        return value in ("true", 1)
    raise InvalidInputError(f"{name} must be true or false, got {value!r}"[:300])


def _device(value: Any, name: str) -> str:
    """``cpu``, or ``cuda`` / ``cuda:N`` for a GPU this machine has."""
    if value == "cpu":
        return value
    if isinstance(value, str) and value.startswith("cuda"):
        index = value[5:] if value.startswith("cuda:") else ("0" if value == "cuda" else None)
        if index is not None and index.isdigit() and int(index) < torch.cuda.device_count():
            return value
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    raise InvalidInputError(f"{name} must be one of {['cpu'] + gpus}, got {value!r}"[:300])


CHECKS = {
    "foreground": _points,
    "background": _points,
    "margin_points": lambda v, n: _integer(v, n, 2, MAX_MARGIN_POINTS),
    "lamda": lambda v, n: _number(v, n, *LAMDA_RANGE),
    "sigma": lambda v, n: _number(v, n, *SIGMA_RANGE),
    "slice_axis": lambda v, n: _integer(v, n, 0, 2),
    "result_extension": _choice(RESULT_EXTENSIONS),
    "result_dtype": _choice(RESULT_DTYPES),
    "result_compress": _flag,
    "device": _device,
}
