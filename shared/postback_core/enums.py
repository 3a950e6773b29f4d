"""Every closed set of values the platform stores or accepts, defined once.

Python code, the database's CHECK constraints, the API schemas, the pages and
the CLI all take their values from these enumerations, so a value can't exist
in one place and be missing in another (a filter offering a reason that is
never stored, a stored outcome the page can't show). Values are the strings
stored in the database: changing one needs a migration.
"""

from __future__ import annotations

from enum import StrEnum


class DeadLetterReason(StrEnum):
    """Why a postback (or an unreadable message) ended in the dead-letter queue."""

    EXHAUSTED = "exhausted"  # every attempt failed with a retryable error
    PERMANENT_HTTP_4XX = "permanent_http_4xx"  # refused by the receiver (a 4xx but 408/425/429)
    UNEXPECTED_STATUS = "unexpected_status"  # 1xx/3xx without a usable Location, or other oddities
    SSRF_BLOCKED = "ssrf_blocked"  # the URL points at a non-public address
    INVALID_URL = "invalid_url"  # the rendered URL can't be requested
    TOO_MANY_REDIRECTS = "too_many_redirects"
    POISON = "poison"  # the message is not a valid conversion event
    OVERSIZED = "oversized"  # the message is larger than the accepted maximum
    DELIVERY_LIMIT = "delivery_limit"  # the broker gave up redelivering it
    BROKER_REJECTED = "broker_rejected"  # dead-lettered by the broker for another reason
    UNKNOWN = "unknown"  # arrived in the dead-letter queue without a reason


class AttemptOutcome(StrEnum):
    """What one row of the attempt log records."""

    DELIVERED = "delivered"
    RETRY = "retry"  # failed; another attempt is scheduled
    DEAD = "dead"  # failed; dead-lettered
    SKIPPED = "skipped"  # the publisher has no postback URL
    DEFERRED = "deferred"  # not sent (endpoint paused by the breaker); no attempt used
    BREAKER_OPEN = "breaker_open"  # legacy rows: an open breaker used to count as an attempt
    FAILED = "failed"  # a test postback that did not get a 2xx


class AttemptTrigger(StrEnum):
    """Why an attempt was made."""

    FIRST = "first"
    RETRY = "retry"
    REPLAY = "replay"
    TEST = "test"


class DeliveryStatus(StrEnum):
    """The dispatcher's state of one conversion's postback (``deliveries.status``)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    SKIPPED = "skipped"
    DEAD = "dead"


class DeadLetterState(StrEnum):
    """Where a dead letter is in the operators' workflow (``dead_letters.state``)."""

    DEAD = "dead"  # open: listed, can be replayed or purged
    REPLAYED = "replayed"
    PURGED = "purged"


class SessionKind(StrEnum):
    """Who a page session (``web_sessions.kind``) signs in."""

    PUBLISHER = "publisher"  # the Postback Settings page, with the publisher's API key
    OPERATOR = "operator"  # the Dead letters pages, with the admin token


class ConversionStatus(StrEnum):
    """A conversion's status as the advertiser (or an operator) reports it."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ConversionRejectReason(StrEnum):
    """Why the platform itself stored a conversion as rejected (operators may give others)."""

    CAP_REACHED = "cap_reached"  # beyond the goal's daily or total cap
    ATTRIBUTION_WINDOW = "attribution_window"  # the click is older than the offer's window


class ConversionActor(StrEnum):
    """Who set a conversion's status (``conversion_status_history.actor``)."""

    ADVERTISER = "advertiser"
    OPERATOR = "operator"
    HOLD_EXPIRY = "hold_expiry"  # the scheduled job, when a hold ended
    RULES = "rules"  # caps and the attribution window, at creation


class ClickOutcome(StrEnum):
    """How the gateway answered a SmartLink click (metric label)."""

    REDIRECTED = "redirected"  # to an offer
    FALLBACK = "fallback"  # no offer matched: to the SmartLink's fallback URL
    BOT = "bot"  # redirected, but a crawler (or a HEAD probe): not billable traffic
    NOT_FOUND = "not_found"  # unknown or inactive SmartLink
    NO_OFFER = "no_offer"  # no offer matched and no fallback URL
    BUSY = "busy"  # 503: starting, stopping, or the click buffer is full
    METHOD_NOT_ALLOWED = "method_not_allowed"


class ConversionOutcome(StrEnum):
    """What became of a reported conversion (metric label)."""

    CREATED = "created"  # 201: stored, postback on its way
    DUPLICATE = "duplicate"  # 200: the same (click, txid) was reported before
    CLICK_NOT_FOUND = "click_not_found"  # 404
    FORBIDDEN = "forbidden"  # 403: the click went to another advertiser's offer
    INVALID = "invalid"  # 422: refused by the recorder (e.g. payout over the maximum)
    CONFLICT = "conflict"  # 409: changed concurrently
    REFUSED = "refused"  # any other refusal


class StatusClass(StrEnum):
    """A postback attempt's HTTP answer, by class (metric label: no raw codes, no hosts)."""

    SUCCESS = "2xx"
    REDIRECT = "3xx"
    CLIENT_ERROR = "4xx"
    SERVER_ERROR = "5xx"
    INFORMATIONAL = "1xx"
    NONE = "none"  # no HTTP answer: connection error, timeout, DNS, blocked, not sent


def sql_values(enum: type[StrEnum]) -> str:
    """``'a', 'b', 'c'``: the members as an SQL list, for ``CHECK (column IN (...))``."""
    return ", ".join("'" + member.value.replace("'", "''") + "'" for member in enum)
