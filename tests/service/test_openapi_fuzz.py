"""Schemathesis against the OpenAPI document, authenticated, over HTTP: no 5xx, and every
response matches the documented status codes, content types and schemas. Bounded: a few
examples per operation, no deadline.

The document is built from the app at import (schemathesis parametrizes at collection, before
the deployment exists); a test checks that it is exactly what /openapi.json serves.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app

pytestmark = pytest.mark.slow

SPEC = create_app(configure_logs=False).openapi()
schema = schemathesis.openapi.from_dict(SPEC)


def test_the_served_document_is_the_one_fuzzed(deployment):
    import httpx

    served = httpx.get(f"{deployment.url}/openapi.json").json()
    assert served == SPEC
    assert httpx.get(f"{deployment.url}/docs").status_code == 200


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, deployment, dataset):
    # lab-a owns the ingested demo dataset, so list responses carry real records to validate.
    case.call_and_validate(
        base_url=deployment.url,
        headers={"Authorization": f"Bearer {deployment.keys['lab-a']}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance])
