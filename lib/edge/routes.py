"""MONAI Label's HTTP endpoints as this app serves them: off the event loop, their form
fields checked, their failures answered by :func:`lib.edge.errors.http_error`, behind
:class:`lib.edge.exposure.EdgeGuard`.

MONAI Label declares its endpoints ``async`` but does blocking work in them (inference,
writing labels, DICOM conversion), so one click used to stop ``/info/`` and the DICOMweb
proxy for everyone. :func:`install_edge` replaces each such route by the same endpoint run
to completion in one of FastAPI's worker threads. The DICOMweb proxy stays on the loop: it
awaits the request body.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import pkgutil
from typing import Any, Callable

from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute, APIRouter

from lib.edge.errors import http_error
from lib.edge.exposure import EdgeGuard, ExposurePolicy
from lib.transforms.validation import InvalidInputError

logger = logging.getLogger(__name__)

STAY_ON_LOOP = ("monailabel.endpoints.proxy",)
JSON_FORMS = ("params", "info")
INFER_PATH = "/infer/{model}"
# Set from the URL and the uploads; never from the params JSON.
URL_KEYS = ("image", "model", "session", "session_id")


def check_json_forms(kwargs: dict[str, Any]) -> None:
    """Form fields holding JSON (``params``, ``info``) must hold a JSON object."""
    for name in JSON_FORMS:
        value = kwargs.get(name)
        if not isinstance(value, str):
            continue
        try:
            parsed = json.loads(value) if value.strip() else {}
        except ValueError as e:
            raise InvalidInputError(f"{name}: not valid JSON ({e})") from None
        if not isinstance(parsed, dict):
            raise InvalidInputError(f"{name}: expected a JSON object, got {type(parsed).__name__}")


def check_infer_form(kwargs: dict[str, Any]) -> None:
    """``POST /infer/{model}``: an image id from the datastore (the query's ``image``, or a
    session's), no image upload, a ``params`` object without the keys the URL sets; the
    ``label`` of ``params`` (Slicer's segment name) is dropped, so ``label`` is only ever the
    uploaded mask to start from."""
    check_json_forms(kwargs)
    params = json.loads(kwargs.get("params") or "{}")
    given = sorted(set(params) & set(URL_KEYS))
    if given:
        raise InvalidInputError(f"{given} cannot be parameters: the image id goes in the URL (?image=ID)")
    if kwargs.get("file") is not None:
        raise InvalidInputError("file: images are not uploaded with /infer; add it to the datastore (PUT /datastore/) "
                                "and give its id")
    if not kwargs.get("image") and not kwargs.get("session_id"):
        raise InvalidInputError("image: give the id of a datastore image (?image=ID)")
    params.pop("label", None)
    kwargs["params"] = json.dumps(params)


def threaded(endpoint: Callable, check: Callable[[dict], None], what: str) -> Callable:
    """``endpoint`` (a coroutine function that never awaits anything of the server's loop) as a
    plain function with the same signature, which FastAPI runs in a worker thread: ``check``
    first (it may rewrite the arguments), then the coroutine in a fresh event loop there."""

    def run(**kwargs):
        try:
            check(kwargs)
            return asyncio.run(endpoint(**kwargs))
        except HTTPException:
            raise
        except Exception as e:  # MemoryError included: http_error answers it 503
            raise http_error(e, what) from e

    # The endpoint's parameters (FastAPI reads them from the signature), but no __wrapped__:
    # FastAPI would unwrap it, see a coroutine function and call this on the loop.
    run.__signature__ = inspect.signature(endpoint)
    run.__name__, run.__doc__ = endpoint.__name__, endpoint.__doc__
    return run


def install_edge(api: FastAPI, policy: ExposurePolicy) -> int:
    """Move MONAI Label's blocking endpoints off ``api``'s event loop (:func:`threaded`, each
    route replaced in place in its endpoint module's router) and put :class:`EdgeGuard` in
    front of every request; returns how many routes moved."""
    moved = 0
    for module in _endpoint_modules():
        router = getattr(module, "router", None)
        if not isinstance(router, APIRouter):
            continue
        for index, route in enumerate(list(router.routes)):
            if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(route.endpoint):
                continue
            check = check_infer_form if route.path == INFER_PATH else check_json_forms
            what = f"answering {'/'.join(sorted(route.methods))} {route.path}"
            router.routes.remove(route)
            router.add_api_route(
                route.path[len(router.prefix):],
                threaded(route.endpoint, check, what),
                methods=list(route.methods),
                name=route.name,
                summary=route.summary,
                tags=route.tags,
                responses=route.responses,
                dependencies=route.dependencies,
                include_in_schema=route.include_in_schema,
                response_class=route.response_class,
                response_model=None,
            )
            router.routes.insert(index, router.routes.pop())  # same place: the same route matches first
            moved += 1
    api.middleware_stack = EdgeGuard(api.middleware_stack or api.build_middleware_stack(), policy)
    logger.info("%d endpoints run off the event loop; requests pass the edge guard", moved)
    return moved


def _endpoint_modules() -> list:
    """MONAI Label's endpoint modules, except those that must stay on the loop."""
    import monailabel.endpoints as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg]
    return [importlib.import_module(f"{package.__name__}.{n}") for n in names if f"{package.__name__}.{n}" not in STAY_ON_LOOP]
