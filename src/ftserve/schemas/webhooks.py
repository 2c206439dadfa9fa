"""Wire types of `/webhook_endpoints`, in the shape of the `openai` SDK's webhooks resource (the endpoints are
not in OpenAI's spec 2.3.0), and ftserve's delivery log."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from ftserve.domain.webhooks import DeliveryStatus
from ftserve.schemas.common import Request, Wire


class CreateWebhookEndpointRequest(Request):
    name: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1, max_length=2048, description="Where deliveries are POSTed: an http(s) URL.")
    event_types: list[str] = Field(min_length=1, description="The event types sent to this endpoint.")


class UpdateWebhookEndpointRequest(Request):
    """Only the fields given change."""

    name: Annotated[str, Field(min_length=1, max_length=256)] | SkipJsonSchema[None] = None
    url: Annotated[str, Field(min_length=1, max_length=2048)] | SkipJsonSchema[None] = None
    event_types: Annotated[list[str], Field(min_length=1)] | SkipJsonSchema[None] = None


class RotateSecretRequest(Request):
    keep_old_secret_active_for_24_hours: bool = False


class TestWebhookEndpointRequest(Request):
    event_type: str


class WebhookEndpoint(Wire):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str


class WebhookEndpointWithSecret(WebhookEndpoint):
    signing_secret: str


class ListWebhookEndpointsResponse(Wire):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedWebhookEndpoint(Wire):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


# What a test reports, and no more: the receiver's own status, or why a try failed, would turn tests into a
# scanner of whatever the server can reach.
TEST_DELIVERED, TEST_FAILED = 200, 0


class WebhookEndpointTestResult(Wire):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    success: Literal[True] = True
    status_code: int = Field(description=f"{TEST_DELIVERED} when the endpoint took the event (answered 2xx), "
                                         f"{TEST_FAILED} when it did not, whatever the reason.")


class WebhookEventTypeList(Wire):
    object: Literal["list"] = "list"
    data: list[str]


class WebhookDelivery(Wire):
    """ftserve's record of one event's delivery to one endpoint."""

    id: str
    object: Literal["ftserve.webhook_delivery"] = "ftserve.webhook_delivery"
    webhook_endpoint_id: str
    event_id: str = Field(description="The `webhook-id` header and the payload's `id`; the same on every try.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    created_at: int
    last_attempt_at: int | None
    next_attempt_at: int | None = Field(description="When a pending delivery is tried next.")
    response_status_code: int | None
    error: str | None


class ListWebhookDeliveriesResponse(Wire):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]
    first_id: str | None
    last_id: str | None
    has_more: bool
