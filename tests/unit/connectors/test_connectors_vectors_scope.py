"""Tenant scoping of every Qdrant read/delete, and which Qdrant errors are worth a retry."""

from __future__ import annotations

import httpx
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from connectors.vectors import TENANT_KEY, is_transient, tenant_scoped


def test_the_tenant_is_its_own_must_condition_beside_the_callers_filter() -> None:
    caller = models.Filter(should=[models.FieldCondition(key=TENANT_KEY, match=models.MatchValue(value="other"))])
    scoped = tenant_scoped("acme", caller)

    assert scoped.should is None and scoped.must_not is None
    assert isinstance(scoped.must, list) and len(scoped.must) == 2
    assert scoped.must[0] == models.FieldCondition(key=TENANT_KEY, match=models.MatchValue(value="acme"))
    assert scoped.must[1] is caller, "the caller's filter is nested whole, never merged into the tenant clause"
    assert tenant_scoped("acme").must == [scoped.must[0]]


def test_a_tenant_is_required() -> None:
    with pytest.raises(ValueError):
        tenant_scoped("")


def _response(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "reason", b"{}", httpx.Headers())


@pytest.mark.parametrize(("error", "transient"), [
    (_response(503), True),
    (_response(500), True),
    (_response(429), True),
    (_response(404), False),
    (_response(400), False),
    (ResponseHandlingException(httpx.ConnectError("refused")), True),
    (httpx.ReadTimeout("slow"), True),
    (ConnectionRefusedError(), True),
    (ValueError("Collection x not found"), False),
])
def test_transient_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
