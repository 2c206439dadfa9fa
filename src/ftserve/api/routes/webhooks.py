"""`/webhook_endpoints` (the `openai` SDK's `client.webhooks`), `/webhook_event_types`, and ftserve's delivery log."""


from typing import Annotated, Callable

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from ftserve.domain.webhooks import EVENT_TYPES, Delivery, Endpoint, secret_hint
from ftserve.schemas import webhooks as wire
from ftserve.schemas.common import OptionalQuery
from ftserve.services.webhooks import WebhookService


def _endpoint(endpoint: Endpoint) -> wire.WebhookEndpoint:
    return wire.WebhookEndpoint(
        id=endpoint.id, created_at=endpoint.created_at, updated_at=endpoint.updated_at, name=endpoint.name,
        url=endpoint.url, event_types=endpoint.event_types, signing_secret_hint=secret_hint(endpoint.secret),
    )


def _with_secret(endpoint: Endpoint) -> wire.WebhookEndpointWithSecret:
    return wire.WebhookEndpointWithSecret(**_endpoint(endpoint).model_dump(), signing_secret=endpoint.secret)


def _delivery(delivery: Delivery) -> wire.WebhookDelivery:
    return wire.WebhookDelivery(
        id=delivery.id, webhook_endpoint_id=delivery.endpoint_id, event_id=delivery.event_id,
        event_type=delivery.event_type, status=delivery.status, attempts=delivery.attempts,
        created_at=delivery.created_at, last_attempt_at=delivery.last_attempt_at,
        next_attempt_at=int(delivery.next_attempt_at) if delivery.status == "pending" and delivery.next_attempt_at
        else None,
        response_status_code=delivery.response_status_code, error=delivery.error,
    )


def router(webhooks: WebhookService, project: Callable[..., str]) -> APIRouter:
    api = APIRouter(tags=["Webhooks"])
    Project = Annotated[str, Depends(project)]
    Limit = Annotated[int, Query(ge=1, le=100)]

    # Routes that check a URL or send are async: a name lookup or a receiver that takes its time waits on the
    # event loop, not on the thread pool every other project's requests need.
    @api.post("/webhook_endpoints", response_model=wire.WebhookEndpointWithSecret)
    async def create_webhook_endpoint(
        body: wire.CreateWebhookEndpointRequest, owner: Project,
    ) -> wire.WebhookEndpointWithSecret:
        await webhooks.check_url(body.url)
        return _with_secret(await run_in_threadpool(webhooks.create, owner, body.name, body.url, body.event_types))

    @api.get("/webhook_endpoints", response_model=wire.ListWebhookEndpointsResponse)
    def list_webhook_endpoints(owner: Project, after: OptionalQuery = None, limit: Limit = 20) -> wire.ListWebhookEndpointsResponse:
        page = webhooks.list(owner, after=after, limit=limit)
        data = [_endpoint(e) for e in page.items]
        return wire.ListWebhookEndpointsResponse(data=data, first_id=data[0].id if data else None,
                                                 last_id=data[-1].id if data else None, has_more=page.has_more)

    @api.get("/webhook_endpoints/{webhook_endpoint_id}", response_model=wire.WebhookEndpoint)
    def retrieve_webhook_endpoint(webhook_endpoint_id: str, owner: Project) -> wire.WebhookEndpoint:
        return _endpoint(webhooks.get(owner, webhook_endpoint_id))

    @api.post("/webhook_endpoints/{webhook_endpoint_id}", response_model=wire.WebhookEndpoint)
    async def update_webhook_endpoint(
        webhook_endpoint_id: str, body: wire.UpdateWebhookEndpointRequest, owner: Project,
    ) -> wire.WebhookEndpoint:
        if body.url is not None:
            await webhooks.check_url(body.url)
        return _endpoint(await run_in_threadpool(lambda: webhooks.update(
            owner, webhook_endpoint_id, name=body.name, url=body.url, event_types=body.event_types)))

    @api.delete("/webhook_endpoints/{webhook_endpoint_id}", response_model=wire.DeletedWebhookEndpoint)
    def delete_webhook_endpoint(webhook_endpoint_id: str, owner: Project) -> wire.DeletedWebhookEndpoint:
        webhooks.delete(owner, webhook_endpoint_id)
        return wire.DeletedWebhookEndpoint(id=webhook_endpoint_id, deleted=True)

    @api.post("/webhook_endpoints/{webhook_endpoint_id}/rotate_secret", response_model=wire.WebhookEndpointWithSecret)
    def rotate_webhook_endpoint_secret(
        webhook_endpoint_id: str, owner: Project, body: wire.RotateSecretRequest | None = None,
    ) -> wire.WebhookEndpointWithSecret:
        keep = body.keep_old_secret_active_for_24_hours if body else False
        return _with_secret(webhooks.rotate_secret(owner, webhook_endpoint_id, keep_old=keep))

    @api.post("/webhook_endpoints/{webhook_endpoint_id}/test", response_model=wire.WebhookEndpointTestResult)
    async def test_webhook_endpoint(
        webhook_endpoint_id: str, body: wire.TestWebhookEndpointRequest, owner: Project,
    ) -> wire.WebhookEndpointTestResult:
        endpoint = await run_in_threadpool(webhooks.get, owner, webhook_endpoint_id)
        delivered = await webhooks.test(endpoint, body.event_type)
        return wire.WebhookEndpointTestResult(webhook_endpoint_id=webhook_endpoint_id, event_type=body.event_type,
                                              status_code=wire.TEST_DELIVERED if delivered else wire.TEST_FAILED)

    @api.get("/webhook_event_types", response_model=wire.WebhookEventTypeList)
    def list_webhook_event_types(owner: Project) -> wire.WebhookEventTypeList:
        return wire.WebhookEventTypeList(data=list(EVENT_TYPES))

    @api.get("/ftserve/webhook_endpoints/{webhook_endpoint_id}/deliveries",
             response_model=wire.ListWebhookDeliveriesResponse, tags=["ftserve"])
    def list_webhook_deliveries(
        webhook_endpoint_id: str, owner: Project, after: OptionalQuery = None, limit: Limit = 20,
    ) -> wire.ListWebhookDeliveriesResponse:
        """Each event sent to the endpoint, newest first: its status, tries, and what the endpoint last answered."""
        page = webhooks.deliveries(owner, webhook_endpoint_id, after=after, limit=limit)
        data = [_delivery(d) for d in page.items]
        return wire.ListWebhookDeliveriesResponse(data=data, first_id=data[0].id if data else None,
                                                  last_id=data[-1].id if data else None, has_more=page.has_more)

    return api
