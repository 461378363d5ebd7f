from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "bench"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.channel_layer.group_send(
                GROUP, {"type": "chat.message", "text": text_data}
            )

    async def chat_message(self, event):
        await self.send(text_data=event["text"])
