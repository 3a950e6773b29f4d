"""Server-rendered pages: the publishers' Postback Settings and the operators' Dead letters.

Jinja2 templates and static files served by the dispatcher itself (no CDN,
no front-end build); small vanilla JS only for the live preview, the test
button and confirmations.
"""
