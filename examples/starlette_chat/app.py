"""The smallest complete Starlette app with budget_ws: one page, one chat room.

The browser sends a ``chat_message`` event over its WebSocket; the server validates it,
and its handler publishes it to the ``room:lobby`` topic, which every open page
subscribes to. Run it from the repository root with::

    .venv/bin/uvicorn --app-dir examples starlette_chat.app:app

and open http://127.0.0.1:8000/ in two tabs.
"""

from __future__ import annotations

from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from budget_ws import ClientMessage, ConnectionManager, Event
from budget_ws.adapters import client_url
from budget_ws.adapters.starlette import client_route, lifespan, websocket_route

ROOM = "room:lobby"

manager = ConnectionManager("memory://")


class ChatMessage(Event, name="chat_message"):
    """One line of chat, as a client sends it and as every client receives it."""

    author: str = Field(min_length=1, max_length=40)
    text: str = Field(min_length=1, max_length=500)


@manager.on(ChatMessage)
async def chat_message(message: ClientMessage[ChatMessage]) -> None:
    # Validated against ChatMessage before it gets here; send it to everyone in the room.
    await manager.publish(message.event, topic=ROOM)


PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>budget_ws chat</title>
<link rel="icon" href="data:,">
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #messages { list-style: none; padding: 0; min-height: 10rem; border: 1px solid #ccc;
              border-radius: 6px; padding: 0.5rem; }
  #chat { display: flex; gap: 0.5rem; margin-top: 0.5rem; }
  #text { flex: 1; }
  #status { color: #666; }
</style>
<h1>Lobby <small id="status">connecting</small></h1>
<ul id="messages"></ul>
<form id="chat">
  <input id="author" aria-label="Your name" size="10" maxlength="40">
  <input id="text" aria-label="Message" maxlength="500" autocomplete="off" autofocus>
  <button>Send</button>
</form>
<script type="module">
  import { connect } from "__CLIENT_URL__";

  const ws = connect("/ws");
  const status = document.getElementById("status");
  for (const state of ["connecting", "open", "closed"]) {
    ws.on(`budget-ws:${state}`, () => (status.textContent = ws.state));
  }
  ws.subscribe("__ROOM__");

  ws.on("chat_message", ({ author, text }) => {
    const item = document.createElement("li");
    item.textContent = `${author}: ${text}`;
    document.getElementById("messages").append(item);
  });

  const author = document.getElementById("author");
  author.value = `guest-${Math.floor(Math.random() * 1000)}`;
  document.getElementById("chat").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = document.getElementById("text");
    if (text.value && ws.send("chat_message", { author: author.value, text: text.value })) {
      text.value = "";
    }
  });
</script>
</html>
""".replace("__CLIENT_URL__", client_url()).replace("__ROOM__", ROOM)


async def homepage(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


app = Starlette(
    routes=[Route("/", homepage), websocket_route(manager, "/ws"), client_route()],
    lifespan=lifespan(manager),
)
