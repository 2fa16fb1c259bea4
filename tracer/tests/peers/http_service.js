// Service B for tracer's HTTP tests: a plain Node.js HTTP server, no tracing code.
// GET /prices/<id> → JSON; GET /chunked → a chunked response; POST /upload → byte count;
// GET /fail → 500. With `--tls CERT KEY` it serves HTTPS (Node's built-in OpenSSL).
// Prints "PORT <n>" once listening.
const fs = require("fs");
const http = require("http");
const https = require("https");

const args = process.argv.slice(2);
const tls = args.indexOf("--tls");
const port = Number(args.find((a) => /^[0-9]+$/.test(a)) || 0);

const handler = (req, res) => {
  if (req.method === "POST") {
    let received = 0;
    req.on("data", (chunk) => { received += chunk.length; });
    req.on("end", () => {
      res.writeHead(201, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ received }));
    });
    return;
  }
  if (req.url.startsWith("/prices/")) {
    const body = JSON.stringify({ item: req.url.split("/")[2], amount: 1234 });
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  } else if (req.url === "/chunked") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.write("first chunk\n");
    setTimeout(() => { res.write("second chunk\n"); res.end("last\n"); }, 20);
  } else if (req.url === "/fail") {
    res.writeHead(500, { "Content-Type": "text/plain" });
    res.end("boom");
  } else {
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": 2 });
    res.end("ok");
  }
};
const server = tls >= 0
  ? https.createServer({ cert: fs.readFileSync(args[tls + 1]), key: fs.readFileSync(args[tls + 2]) }, handler)
  : http.createServer(handler);
server.keepAliveTimeout = 30000;
server.listen(port, "127.0.0.1", () => {
  console.log(`PORT ${server.address().port}`);
});
