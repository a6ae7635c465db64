"""One module per resource of the API, each with a Blueprint named ``blp``.

The /v1 resources are flask-smorest blueprints in the OpenAPI document; the
one-click unsubscribe link (:mod:`.unsubscribe`, no API key) and the health
checks (:mod:`.health`) are plain Flask blueprints outside it.
"""

from ingest_api.resources import (
    campaigns,
    cdp_events,
    health,
    mails,
    suppressions,
    unsubscribe,
    webhooks,
    workflows,
)

# In the OpenAPI document, in this order.
API_RESOURCES = (mails, campaigns, workflows, cdp_events, webhooks, suppressions)
# Outside it: mail clients, people and load balancers call these, not API clients.
PLAIN_RESOURCES = (health, unsubscribe)
