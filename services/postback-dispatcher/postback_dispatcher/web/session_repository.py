"""All SQL of the pages' sessions (``web_sessions``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from postback_core.db.models import Publisher, WebSession
from postback_core.enums import SessionKind

# Expired rows are kept a day (for the record), then deleted at a later sign-in.
EXPIRED_ROWS_KEPT = timedelta(days=1)


@dataclass(frozen=True)
class LiveSession:
    """A session that is neither revoked nor expired, with its publisher's current state."""

    kind: SessionKind
    publisher_id: int | None
    credential: str
    csrf_token: str
    publisher_name: str | None
    publisher_key_hash: str | None
    publisher_active: bool


class SessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self,
        *,
        id_hash: str,
        kind: SessionKind,
        publisher_id: int | None,
        credential: str,
        csrf_token: str,
        expires_at: datetime,
    ) -> None:
        self.session.add(
            WebSession(
                id_hash=id_hash,
                kind=kind,
                publisher_id=publisher_id,
                credential=credential,
                csrf_token=csrf_token,
                expires_at=expires_at,
            )
        )
        await self.session.flush()

    async def live(self, id_hash: str, kind: SessionKind) -> LiveSession | None:
        """One query per request: the session and (for publishers) who it signs in."""
        row = (
            await self.session.execute(
                select(
                    WebSession.publisher_id,
                    WebSession.credential,
                    WebSession.csrf_token,
                    Publisher.name,
                    Publisher.api_key_hash,
                    Publisher.is_active,
                )
                .outerjoin(Publisher, Publisher.id == WebSession.publisher_id)
                .where(
                    WebSession.id_hash == id_hash,
                    WebSession.kind == kind,
                    WebSession.revoked_at.is_(None),
                    WebSession.expires_at > func.now(),
                )
            )
        ).one_or_none()
        if row is None:
            return None
        return LiveSession(
            kind=kind,
            publisher_id=row.publisher_id,
            credential=row.credential,
            csrf_token=row.csrf_token,
            publisher_name=row.name,
            publisher_key_hash=row.api_key_hash,
            publisher_active=bool(row.is_active),
        )

    async def revoke(self, id_hash: str) -> None:
        await self.session.execute(
            update(WebSession)
            .where(WebSession.id_hash == id_hash, WebSession.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )

    async def delete_expired(self) -> None:
        await self.session.execute(
            delete(WebSession).where(WebSession.expires_at < func.now() - EXPIRED_ROWS_KEPT)
        )
