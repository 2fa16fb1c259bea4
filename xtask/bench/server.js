// The benchmark's HTTP server: Node's http module, keep-alive, a 2-byte answer. No tracing
// code. Usage: node server.js <port> [<cert.pem> <key.pem>] (with a certificate: HTTPS).
const fs = require("fs");
const http = require("http");
const https = require("https");
const [port, cert, key] = process.argv.slice(2);
const handler = (req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": 2 });
  res.end("ok");
};
const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handler)
  : http.createServer(handler);
server.listen(Number(port), "127.0.0.1", () => console.log(`PORT ${port}`));
