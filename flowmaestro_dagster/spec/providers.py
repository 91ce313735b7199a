"""Integration provider ids known to the FlowMaestro builder.

Each id is also a node type rendered as an integration node.
Source: nbaghiro/flowmaestro shared/src/providers.ts @7a063de7.
"""

import re

PROVIDER_IDS: frozenset[str] = frozenset(
    {
        "activecampaign",
        "acuity-scheduling",
        "adp",
        "adyen",
        "aircall",
        "airtable",
        "amazon-seller-central",
        "amplitude",
        "anthropic",
        "apollo",
        "asana",
        "auth0",
        "aws",
        "aws-s3",
        "azure-devops",
        "azure-storage",
        "bamboohr",
        "basecamp",
        "bigcommerce",
        "bigquery",
        "bill-com",
        "bitbucket",
        "box",
        "buffer",
        "cal-com",
        "calendly",
        "canva",
        "chargebee",
        "circleci",
        "clickup",
        "close",
        "cloudflare",
        "coda",
        "cohere",
        "coinbase",
        "confluence",
        "constantcontact",
        "contentful",
        "convertkit",
        "copper",
        "crisp",
        "databricks",
        "datadog",
        "deel",
        "dialpad",
        "digitalocean",
        "discord",
        "docusign",
        "drift",
        "drip",
        "dropbox",
        "ebay",
        "elasticsearch",
        "elevenlabs",
        "etsy",
        "evernote",
        "expensify",
        "facebook",
        "fal",
        "figma",
        "freshbooks",
        "freshdesk",
        "front",
        "getresponse",
        "ghost",
        "gitbook",
        "github",
        "gitlab",
        "gmail",
        "google",
        "google-analytics",
        "google-calendar",
        "google-cloud",
        "google-cloud-storage",
        "google-docs",
        "google-drive",
        "google-forms",
        "google-meet",
        "google-sheets",
        "google-slides",
        "gorgias",
        "gotowebinar",
        "gusto",
        "heap",
        "hellosign",
        "helpscout",
        "heroku",
        "hibob",
        "hootsuite",
        "hotjar",
        "hubspot",
        "hubspot-marketing",
        "huggingface",
        "insightly",
        "instagram",
        "intercom",
        "jira",
        "jotform",
        "klarna",
        "klaviyo",
        "kustomer",
        "lattice",
        "launchdarkly",
        "linear",
        "linkedin",
        "livechat",
        "looker",
        "loom",
        "luma",
        "magento",
        "mailchimp",
        "mailgun",
        "marketo",
        "medium",
        "messagebird",
        "microsoft-bookings",
        "microsoft-dynamics",
        "microsoft-excel",
        "microsoft-onedrive",
        "microsoft-outlook",
        "microsoft-powerpoint",
        "microsoft-teams",
        "microsoft-word",
        "miro",
        "mixpanel",
        "monday",
        "mongodb",
        "mysql",
        "netlify",
        "netsuite",
        "new-relic",
        "notion",
        "odoo",
        "okta",
        "onesignal",
        "openai",
        "optimizely",
        "oracle-erp",
        "pagerduty",
        "pandadoc",
        "pardot",
        "paypal",
        "personio",
        "pinecone",
        "pinterest",
        "pipedrive",
        "plaid",
        "postgresql",
        "posthog",
        "postman",
        "postmark",
        "power-bi",
        "pusher",
        "quickbooks",
        "ramp",
        "razorpay",
        "reddit",
        "redis",
        "redshift",
        "replicate",
        "ringcentral",
        "rippling",
        "runway",
        "sage",
        "salesforce",
        "sap",
        "sap-successfactors",
        "segment",
        "sendbird",
        "sendgrid",
        "sendinblue",
        "sentry",
        "sharepoint",
        "shippo",
        "shipstation",
        "shopify",
        "slack",
        "smartsheet",
        "snowflake",
        "splunk",
        "sprout-social",
        "square",
        "squarespace",
        "stabilityai",
        "stripe",
        "supabase",
        "surveymonkey",
        "tableau",
        "telegram",
        "tiktok",
        "todoist",
        "trello",
        "twilio",
        "twitter",
        "typeform",
        "vercel",
        "vimeo",
        "vonage",
        "webex",
        "whatsapp",
        "wise",
        "wix",
        "woocommerce",
        "wordpress",
        "workday",
        "wrike",
        "xai",
        "xero",
        "youtube",
        "zendesk",
        "zoho-crm",
        "zoom",
    }
)

# Webhook trigger providers whose own verification scheme is checked (control/hook_providers.py
# holds the verifiers; a test keeps the two in step). Others use the generic scheme.
VERIFIED_HOOK_PROVIDERS = frozenset(
    {"github", "stripe", "slack", "shopify", "typeform", "discord", "salesforce"}
)

# Discord's interaction types, named as its docs name them: the head of the event a Discord
# delivery names (`hook_providers.delivery_event`: `application_command.<name>`, ...; an unknown
# type is `interaction_<n>`). A PING is the endpoint's handshake: answered, never started.
DISCORD_INTERACTIONS: dict[int, str] = {
    1: "ping",
    2: "application_command",
    3: "message_component",
    4: "application_command_autocomplete",
    5: "modal_submit",
}
# Deliveries that are a provider's handshake: answered, never started (`hook_providers.handshake`).
HANDSHAKE_EVENTS: dict[str, str] = {"discord": "ping", "slack": "url_verification"}
# Providers whose event names are lower-case as delivered and compared exactly (GitHub's
# `X-GitHub-Event` and `action`, Stripe's `type`, Slack's `event.type`, Shopify's
# `X-Shopify-Topic`). Their vocabularies are open (each API version adds events), so only the
# spelling is checked; Salesforce compares in any case and Typeform's event is not filtered.
_LOWER_CASE_EVENTS = frozenset({"github", "stripe", "slack", "shopify"})
_DISCORD_UNKNOWN_TYPE = re.compile(r"interaction_[0-9]+")


def undeliverable_event(provider: str | None, event: str) -> str | None:
    """Why a trigger's `event` can never be named by a delivery its verified provider makes (so
    the event filter would ignore every one), or None when it can, or nobody can tell (an
    unverified provider, an open vocabulary). Mirrors `hook_providers.delivery_event` and
    `event_matches`: `pull_request` takes every `pull_request.<action>`."""
    name = (provider or "").strip().lower()
    wanted = event.strip()
    if not wanted:
        return None
    if HANDSHAKE_EVENTS.get(name) == wanted:
        return f"{provider} sends {wanted} only to check the URL: it is answered, never started"
    if name == "discord":
        head = wanted.split(".", 1)[0]
        if head in DISCORD_INTERACTIONS.values() or _DISCORD_UNKNOWN_TYPE.fullmatch(head):
            return None
        return (
            f"Discord's interactions endpoint never delivers '{wanted}': it sends "
            "application_command.<name>, message_component.<custom_id>, "
            "application_command_autocomplete.<name> and modal_submit.<custom_id> (a bot's "
            "gateway events, such as messages, never reach a webhook)"
        )
    if name in _LOWER_CASE_EVENTS and (wanted != wanted.lower() or " " in wanted):
        return f"{provider} names its events in lower case without spaces: '{wanted}' never matches"
    return None
