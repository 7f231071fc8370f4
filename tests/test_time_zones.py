"""Every time is stored as the instant it names, whatever zone it was written in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import update

from shared import lifecycle
from shared.db import session_scope
from shared.models import Broadcast

EASTERN = timezone(timedelta(hours=-5))


def test_a_send_at_with_an_offset_is_kept_as_that_instant(client, settings):
    send_at = (datetime.now(UTC) + timedelta(hours=2)).astimezone(EASTERN)
    response = client.post(
        "/v1/broadcasts",
        json={"recipients": ["+14155550001"], "text": "Later", "send_at": send_at.isoformat()},
    )
    assert response.status_code == 202
    broadcast_id = uuid.UUID(response.get_json()["id"])

    with session_scope(settings.database_url) as session:
        stored = session.get(Broadcast, broadcast_id).scheduled_at
        # Two hours away: nothing starts it now (stored as wall time it would be 3 h ago).
        assert lifecycle.start_due(session) == 0
    assert stored.tzinfo is not None
    assert stored == send_at
    shown = client.get(f"/v1/broadcasts/{broadcast_id}").get_json()
    assert datetime.fromisoformat(shown["scheduled_at"]) == send_at


def test_created_after_with_an_offset_filters_by_the_instant(client, settings):
    response = client.post("/v1/broadcasts", json={"recipients": ["+14155550001"], "text": "x"})
    broadcast_id = uuid.UUID(response.get_json()["id"])
    created = datetime.now(UTC) - timedelta(hours=3)
    with session_scope(settings.database_url) as session:
        session.execute(update(Broadcast).values(created_at=created))

    def listed(after: datetime) -> list[str]:
        page = client.get("/v1/broadcasts", query_string={"created_after": after.isoformat()})
        assert page.status_code == 200
        return [item["id"] for item in page.get_json()["items"]]

    # One hour before creation, written in UTC-5: the broadcast is after it.
    assert listed((created - timedelta(hours=1)).astimezone(EASTERN)) == [str(broadcast_id)]
    # One hour after creation, written in UTC-5: it is not.
    assert listed((created + timedelta(hours=1)).astimezone(EASTERN)) == []
