// Service B for tracer's HTTP tests: a plain Node.js HTTP server, no tracing code.
// GET /prices/<id> → JSON; GET /chunked → a chunked response; POST /upload → byte count;
// GET /fail → 500. Prints "PORT <n>" once listening.
const http = require("http");

const server = http.createServer((req, res) => {
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
});
server.keepAliveTimeout = 30000;
server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(`PORT ${server.address().port}`);
});
