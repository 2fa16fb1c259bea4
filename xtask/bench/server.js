// The benchmark's HTTP server: Node's http module, keep-alive, a 2-byte answer. No tracing
// code. Usage: node server.js <port>
const http = require("http");
const port = Number(process.argv[2]);
http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": 2 });
    res.end("ok");
  })
  .listen(port, "127.0.0.1", () => console.log(`PORT ${port}`));
