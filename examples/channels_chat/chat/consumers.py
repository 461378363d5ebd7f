"""The Channels tutorial's consumer, and a worker for roomcast's channel mode.

With roomcast serving `/ws/chat/<room>/` in relay mode, `ChatConsumer` is
not needed at all: roomcast relays each frame to the room and Django's
`group_send("chat_<room>", {"type": "chat.message", ...})` reaches its
members. It stays here for daphne during a migration.

`InboundWorker` runs under `manage.py runworker chat.inbound`: roomcast
sends it every frame of its channel-mode endpoint; it is plain synchronous
Django code (the ORM works, no event loop to worry about).
"""
import json

from asgiref.sync import async_to_sync
from channels.consumer import SyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from .models import Message


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        message = json.loads(text_data)["message"]
        await self.channel_layer.group_send(self.room_group_name, {"type": "chat.message", "message": message})

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))


class InboundWorker(SyncConsumer):
    """Frames of roomcast's channel-mode endpoint: saved, then sent to the room."""

    def websocket_connect(self, event):
        send = async_to_sync(self.channel_layer.send)
        send(event["reply_channel"], {"type": "websocket.send", "text": json.dumps({"welcome": event["room"]})})

    def websocket_receive(self, event):
        send = async_to_sync(self.channel_layer.send)
        try:
            text = json.loads(event["text"])["message"]
        except (KeyError, TypeError, ValueError):
            send(event["reply_channel"], {"type": "websocket.close", "code": 4400})
            return
        msg = Message.objects.create(room=event["room"], user=event.get("user") or "", text=text)
        async_to_sync(self.channel_layer.group_send)(
            event["room"], {"type": "chat.message", "message": text, "id": msg.id}
        )

    def websocket_disconnect(self, event):
        pass
