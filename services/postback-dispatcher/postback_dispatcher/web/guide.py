"""Content of the Postback Settings page taken from the publishers' integration guide."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UrlExample:
    name: str
    template: str
    note: str


URL_EXAMPLES: tuple[UrlExample, ...] = (
    UrlExample(
        "Generic tracking system",
        "https://yourdomain.com/postback?click_id={external_id}&payout={payout}&country={country}",
        "Works with most trackers: your click id, the payout and the country.",
    ),
    UrlExample(
        "With security token",
        "https://yourdomain.com/postback?click_id={external_id}&payout={payout}&token={security_token}",
        "Adds your security token so your endpoint can reject forged postbacks.",
    ),
    UrlExample(
        "Trackier format",
        "https://yourdomain.trackier.co/acquisition?click_id={external_id}&security_token={security_token}&payout={payout}",
        "The parameter names Trackier expects.",
    ),
    UrlExample(
        "Full details format",
        "https://yourdomain.com/postback?external_id={external_id}&payout={payout}&country={country}&ip={ip}&os={os}&device={device}&offer_id={offer_id}",
        "Everything we know about the conversion, for reporting.",
    ),
    UrlExample(
        "Simple format",
        "https://yourdomain.com/conversion?id={external_id}&amount={payout}",
        "Just the click id and the amount.",
    ),
)


@dataclass(frozen=True)
class FlowStep:
    title: str
    text: str
    example: str
    caption: tuple[str, ...]  # short lines for the diagram (the list below has the full text)


FLOW_STEPS: tuple[FlowStep, ...] = (
    FlowStep(
        "User clicks",
        "User clicks your SmartLink with your click id (external_id)",
        "https://downlosxa.online/get/ABC123?cid=YOUR_CLICK_ID_789",
        ("Your SmartLink,", "with your click id", "in ?cid="),
    ),
    FlowStep(
        "MaxPPI records",
        "MaxPPI creates a click with both internal and external ids",
        "click_id=12345, external_id=YOUR_CLICK_ID_789",
        ("Stores the click:", "click_id 12345 +", "your external_id"),
    ),
    FlowStep(
        "User converts",
        "User installs the app and the conversion is recorded",
        "",
        ("The app is", "installed and the", "conversion recorded"),
    ),
    FlowStep(
        "Postback fired",
        "MaxPPI sends the postback to your URL",
        "https://yourdomain.com/postback?click_id=YOUR_CLICK_ID_789&payout=0.50&country=US",
        ("MaxPPI calls your", "URL with the", "macros filled in"),
    ),
    FlowStep(
        "Attribution",
        "Your system receives the postback and matches YOUR_CLICK_ID_789 to the conversion",
        "",
        ("Your tracker", "matches the click id", "and credits the sale"),
    ),
)

BEST_PRACTICES: tuple[tuple[str, str], ...] = (
    ("Use HTTPS", "Always use HTTPS for secure data transmission."),
    ("Return HTTP 200 OK", "Confirm postback receipt with an HTTP 200 status code."),
    (
        "Implement idempotency",
        "Use click_id (and the X-Postback-Id header) to detect and ignore duplicate postbacks.",
    ),
    (
        "Validate the security token",
        "Verify postback authenticity with your token, or check the X-Postback-Signature header.",
    ),
    ("Log postbacks", "Keep logs of received postbacks for debugging and reconciliation."),
    (
        "Handle timeouts",
        "Answer within 10 to 30 seconds; we wait 15 seconds and retry later if you don't.",
    ),
    (
        "Use the external id",
        "Always pass your click id in the tracking URL (cid=…) for proper attribution.",
    ),
)

TROUBLESHOOTING: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Postbacks not received",
        (
            "Check that your postback URL is reachable from the internet.",
            "Verify your firewall allows incoming connections from MaxPPI servers.",
            "Make sure your server returns HTTP 200 OK.",
            "Check Recent deliveries below for errors, and use Send test postback.",
        ),
    ),
    (
        "Wrong data in postbacks",
        (
            "Verify the spelling of the macros in your postback URL "
            "(the editor flags unknown ones).",
            "Make sure external_id is passed in the tracking URL "
            "(cid, clickid, click_id or external_id).",
            "Review your Postback Settings configuration.",
        ),
    ),
    (
        "Duplicate postbacks",
        (
            "Implement idempotency using click_id.",
            "Use database unique constraints on click_id.",
            "Log and ignore duplicate postbacks.",
        ),
    ),
)
