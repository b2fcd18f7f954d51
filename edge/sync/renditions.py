"""The diagnostic rendition a hub asks for (issue 20 item 2): a specialist opened a study that
has no rendition (edge/hub/rendition_requests.py); the device pulls the open requests each round,
before it queues its files, and queues the rendition of each result it still has. The file then
goes like any other (`SyncClient.push_files`, through `edge.sync.outgoing.PixelGuard`); a clip's
cine (edge/sync/cine.py) is queued with it. A hub
that does not ask yet (an older hub: 404 NOT_FOUND) is a round without requests, not a failure.
"""

from __future__ import annotations

from edge.sync.cine import has_video
from edge.sync.client import SyncClient
from edge.sync.credential import HubRefused
from edge.sync.protocol import WireCode


def pull_rendition_requests(client: SyncClient) -> int:
    """Queue the renditions the hub asked for; returns how many were queued now. Nothing is
    asked under `[sync] diagnostic = "never"` or `images = "none"`. Each result's rendition is
    queued once (its outbox task is unique): one withheld for its text is not asked again."""
    sync = client.settings.sync
    if sync.diagnostic == "never" or sync.images == "none":
        return 0
    try:
        asked = client.rendition_requests()
    except HubRefused as exc:
        if exc.code is WireCode.NOT_FOUND:
            return 0
        raise
    tasks = []
    for result_uuid in asked.results:
        result = client.store.result(str(result_uuid))
        if result is not None:  # deleted here since: its tombstone tells the hub
            payload = {"result_id": result.id, "image_id": result.image_id}
            tasks.append(("rendition", result.id, payload))
            if has_video(client.store, result.id):  # a clip: its cine too (edge/sync/cine.py)
                tasks.append(("cine", result.id, payload))
    return client.store.outbox.add_upload_tasks(tasks)
