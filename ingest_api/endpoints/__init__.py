"""One module per public endpoint, each with a flask-smorest Blueprint named ``blp``."""

from ingest_api.endpoints import (
    create_campaign,
    create_workflow,
    delete_campaign,
    delete_workflow,
    get_campaign,
    list_campaigns,
    list_cdp_events,
    list_workflows,
    preview_campaign,
    receive_cdp_event,
    trigger_campaign,
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
