"""How the server answers failures: a client's mistake is a 4xx naming it, a fault of the
server a 5xx saying what failed (never a bare "Internal Server Error")."""

from __future__ import annotations

import logging

from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

from lib.infers.budget import BudgetExceeded
from lib.transforms.validation import InvalidInputError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class UnknownResource(LookupError):
    """A model, image or strategy the server does not have (HTTP 404)."""


class ServerBusy(RuntimeError):
    """Too many requests in progress or waiting (HTTP 503 with Retry-After)."""


def http_error(error: BaseException, what: str) -> HTTPException:
    """The HTTP answer to ``error``, raised while the server was doing ``what``."""
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, InvalidInputError):
        return HTTPException(status_code=400, detail=str(error))
    if isinstance(error, (UnknownResource, FileNotFoundError, ImageNotFoundException, LabelNotFoundException)):
        return HTTPException(status_code=404, detail=error.msg if isinstance(error, MONAILabelException) else str(error))
    if isinstance(error, MONAILabelException) and error.error == MONAILabelError.INVALID_INPUT:
        return HTTPException(status_code=400, detail=error.msg)
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(error, (BudgetExceeded, ServerBusy)):
        return HTTPException(status_code=503, detail=str(error), headers=retry)
    if isinstance(error, MemoryError):
        return HTTPException(status_code=503, detail=f"out of memory while {what}; try again later", headers=retry)
    logger.exception("internal error while %s", what, exc_info=error)
    return HTTPException(status_code=500, detail=f"internal error while {what}: {type(error).__name__}: {error}"[:500])
