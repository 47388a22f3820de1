"""A deployment with no authentication and no payments: a task id is a capability, and
nobody can list anybody's tasks."""

from __future__ import annotations

import uuid

import httpx

from bindu.examples.echo import agent as echo
from tests.support.servers import inprocess_server, rpc, text_message
from tests.support.settings import settings_from_env


async def test_ids_are_capabilities_and_listings_show_nothing():
    settings = settings_from_env({"STORAGE__URL": "memory://"})
    async with inprocess_server(settings, echo) as url, httpx.AsyncClient(timeout=30) as http:
        sent = (await rpc(http, url, "message/send", text_message("mine"))).json()["result"]
        got = (await rpc(http, url, "tasks/get", {"id": sent["id"]})).json()
        assert got["result"]["artifacts"][0]["parts"][0]["text"] == "echo: mine"
        listed = (await rpc(http, url, "tasks/list", {"includeArtifacts": True})).json()
        assert listed["result"] == {"tasks": [], "nextPageToken": None}
        unknown = (await rpc(http, url, "tasks/get", {"id": str(uuid.uuid4())})).json()
        assert unknown["error"]["code"] == -32001
        # No credentials to declare; sending some is refused rather than ignored.
        card = (await http.get(url + "/.well-known/agent.json")).json()
        assert "securitySchemes" not in card and "security" not in card
        refused = await rpc(http, url, "tasks/list", {}, headers={"X-API-Key": "guess"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == -32030
