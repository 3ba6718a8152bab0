"""Errors a client can cause, each with its HTTP status and a stable machine-readable kind.

Anything raised that is not a `ServingError` is a server fault (500); everything a request can get
wrong maps to one of these, so a client error is never reported as a 500.
"""

from __future__ import annotations


class ServingError(Exception):
    status_code = 500
    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        # Errors cross process boundaries (scorer -> ingress); rebuild from the message alone so
        # subclasses may take other constructor arguments.
        return _rebuild, (type(self), self.message)


def _rebuild(cls: type[ServingError], message: str) -> ServingError:
    error = cls.__new__(cls)
    ServingError.__init__(error, message)
    return error


class BadRequestError(ServingError):
    status_code = 422
    kind = "invalid_request"


class UnknownTaskError(BadRequestError):
    kind = "unknown_task"

    def __init__(self, task: str, known: list[str]) -> None:
        super().__init__(f"unknown task {task!r}; this model serves {sorted(known)} (see GET /v1/tasks)")


class TooManyCandidatesError(BadRequestError):
    kind = "too_many_candidates"


class TooManyGroupsError(BadRequestError):
    kind = "too_many_groups"


class UnknownContextFeatureError(BadRequestError):
    kind = "unknown_context_feature"


class UnauthorizedError(ServingError):
    status_code = 401
    kind = "unauthorized"


class PayloadTooLargeError(ServingError):
    status_code = 413
    kind = "payload_too_large"


class UnsupportedMediaTypeError(ServingError):
    status_code = 415
    kind = "unsupported_media_type"


class BodyTimeoutError(ServingError):
    """The request's body did not arrive within its deadline (a slow or stalled client)."""

    status_code = 408
    kind = "body_timeout"


class RequestTimeoutError(ServingError):
    status_code = 504
    kind = "timeout"


class UnavailableError(ServingError):
    """The endpoint cannot answer now but will (the client should retry after Retry-After)."""

    status_code = 503
    kind = "unavailable"


class ModelNotReadyError(UnavailableError):
    kind = "model_not_ready"


class OverloadedError(UnavailableError):
    kind = "overloaded"


class FeaturesUnavailableError(UnavailableError):
    kind = "features_unavailable"
