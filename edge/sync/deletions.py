"""Deletions reach the hub: each tombstone the store queued with a deletion (a study or one
result deleted on the device, `store.technician`) is sent after the results of the round, so a
result and its tombstone queued together arrive in that order, and acknowledged like a result
(exactly once: the hub keeps one tombstone per (device, result) and answers a re-send as a
duplicate). A hub that does not take tombstones yet (an older hub: 404 NOT_FOUND) keeps them
queued without failing the round; they go once the hub is upgraded.
"""

from __future__ import annotations

import json
import logging
import uuid

from edge.sync import protocol
from edge.sync.client import SyncClient
from edge.sync.credential import HubRefused
from edge.sync.protocol import WireCode

log = logging.getLogger(__name__)


def push_tombstones(client: SyncClient) -> int:
    """Send every unacknowledged tombstone; returns how many the hub now has."""
    outbox = client.store.outbox
    sent = 0
    while True:
        rows = outbox.pending_outbox(["tombstone"], client.settings.sync.batch_records)
        if not rows:
            return sent
        tombstones = [
            protocol.Tombstone(
                result_uuid=row["ref_id"],
                seq=row["seq"],
                deleted_at=str(json.loads(row["payload"]).get("deleted_at", ""))[:32],
            )
            for row in rows
        ]
        batch = protocol.TombstoneBatch(batch_id=str(uuid.uuid4()), tombstones=tombstones)
        try:
            reply = client.send_tombstones(batch)
        except HubRefused as exc:
            outbox.mark_attempt([row["id"] for row in rows], str(exc)[:200])
            if exc.code is WireCode.NOT_FOUND:
                log.warning("sync: the hub does not take deletions yet (upgrade it); %d kept", len(rows))
                return sent
            raise
        except Exception as exc:
            outbox.mark_attempt([row["id"] for row in rows], str(exc)[:200])
            raise
        by_uuid = {row["ref_id"]: row["id"] for row in rows}
        done = [by_uuid[u] for u in reply.applied + reply.duplicates if u in by_uuid]
        outbox.mark_acked(done)
        sent += len(done)
        if len(done) < len(rows):  # the hub answered for fewer than it was sent: retry next round
            return sent
