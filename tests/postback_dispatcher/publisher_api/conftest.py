from tests.postback_dispatcher.portal_fixtures import api, db, event_tap, portal_url  # noqa: F401
