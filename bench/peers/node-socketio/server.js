// Socket.IO benchmark peer (contract A).
// Usage: node server.js PORT   (or --port PORT)
// With REDIS_URL=redis://127.0.0.1:6379/0 in the environment it uses
// @socket.io/redis-adapter, so several processes on one Redis form a cluster.
import { createServer } from "node:http";
import { Server } from "socket.io";

const args = process.argv.slice(2);
const port = Number(args[0] === "--port" ? args[1] : (args[0] ?? 3000));

const httpServer = createServer();
// Defaults: path "/socket.io/", pingInterval 25s, pingTimeout 20s, maxHttpBufferSize 1e6.
const io = new Server(httpServer, { serveClient: false });

if (process.env.REDIS_URL) {
  // The adapter's documented setup: one client publishes, a duplicate subscribes.
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const pubClient = createClient({ url: process.env.REDIS_URL });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => {
      console.error(`redis: ${err.message}`);
      process.exit(1);
    });
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

io.on("connection", (socket) => {
  socket.on("join", ({ room }, ack) => {
    socket.join(room);
    ack?.({ ok: true });
  });

  socket.on("publish", ({ room, event, data }, ack) => {
    io.to(room).emit(event, data);
    ack?.({ ok: true });
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(`ready on 127.0.0.1:${httpServer.address().port}\n`);
});
