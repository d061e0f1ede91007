"""One router per resource; ``responses`` documents the errors every /v1 route can return."""

from __future__ import annotations


def errors(*codes: int) -> dict[int | str, dict]:
    descriptions = {
        400: "Malformed request (body, form or header)",
        401: "Missing, invalid or revoked API key",
        404: "No such resource for this lab (another lab's resources are not found either)",
        403: "A lab's key where the operator's is needed (/metrics with MCVAE_METRICS_KEY set)",
        409: "The resource is not in a state that allows this",
        413: "Upload, archive member count or unpacked size over the limit, or past the lab's storage quota",
        415: "Not a .zip or .tar.gz archive, or an unsupported Content-Type",
        422: "Invalid input: the message names the field, file or limit",
        429: "Rate limit of this key, failed key checks from this address, or the lab's active jobs exceeded; see Retry-After",
        500: "The job failed on the worker for a reason of its own (a bug); quote the request id",
        503: "The job queue, the database or the storage is unavailable; see Retry-After",
    }
    # JSON whatever the route's own media type (event streams and downloads fail in JSON too);
    # the app's OpenAPI hook adds ErrorBody to the components.
    return {code: {"description": descriptions[code], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for code in codes}


# Every authenticated route can answer these (400: a body that is not even parseable; 503: the
# database is down, service/errors.py).
COMMON = errors(400, 401, 422, 429, 503)
