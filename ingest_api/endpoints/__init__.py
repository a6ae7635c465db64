"""One module per public endpoint, each with a flask-smorest Blueprint named ``blp``."""

from ingest_api.endpoints import (
    create_campaign,
    create_suppression,
    create_webhook,
    create_workflow,
    delete_campaign,
    delete_suppression,
    delete_webhook,
    delete_workflow,
    get_campaign,
    get_suppression,
    list_campaigns,
    list_cdp_events,
    list_suppressions,
    list_webhooks,
    list_workflows,
    preview_campaign,
    receive_cdp_event,
    trigger_campaign,
    unsubscribe,
    update_campaign,
)

# Campaigns, CDP workflows and CDP events, registered by the app factory.
CAMPAIGN_ENDPOINTS = (
    create_campaign,
    list_campaigns,
    get_campaign,
    update_campaign,
    delete_campaign,
    trigger_campaign,
    preview_campaign,
    create_workflow,
    list_workflows,
    delete_workflow,
    receive_cdp_event,
    list_cdp_events,
)

# Status webhooks, registered by the app factory.
WEBHOOK_ENDPOINTS = (create_webhook, list_webhooks, delete_webhook)

# The suppression list (API key), registered by the app factory. The one-click
# unsubscribe link (``unsubscribe.blp``, a plain Flask blueprint without API key)
# is registered beside them, outside the OpenAPI document.
SUPPRESSION_ENDPOINTS = (
    list_suppressions,
    create_suppression,
    get_suppression,
    delete_suppression,
)
UNSUBSCRIBE_BLUEPRINT = unsubscribe.blp
