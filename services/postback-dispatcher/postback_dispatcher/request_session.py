"""A request session that commits *before* the response leaves.

The shared ``deps.Session`` commits after the response is sent (FastAPI's
default dependency scope), so a client that acts on a 2xx at once could still
see the old state, and a failed commit would be invisible. Operator and
publisher actions are read back immediately (replay, then list), so they use
this function-scoped variant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from postback_dispatcher.deps import get_session

CommittedSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
