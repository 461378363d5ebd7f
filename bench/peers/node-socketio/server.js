// Socket.IO benchmark peer (contract A).
// Usage: node server.js PORT   (or --port PORT)
import { createServer } from "node:http";
import { Server } from "socket.io";

const args = process.argv.slice(2);
const port = Number(args[0] === "--port" ? args[1] : (args[0] ?? 3000));

const httpServer = createServer();
// Defaults: path "/socket.io/", pingInterval 25s, pingTimeout 20s, maxHttpBufferSize 1e6.
const io = new Server(httpServer, { serveClient: false });

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
