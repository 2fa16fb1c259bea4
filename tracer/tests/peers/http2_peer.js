// Unmodified Node.js http2 server and client for tracer's HTTP/2 tests.
//   node http2_peer.js serve [--tls CERT KEY]   prints "PORT <n>"; h2c (prior knowledge)
//                                               or TLS with ALPN h2
//   node http2_peer.js call URL ORDER [CA]      one connection, one stream each:
//     GET /orders/ORDER/price, POST /upload (a 200 KiB body), GET /big (300 KiB back),
//     GET /reset (the server resets the stream); prints a JSON report
// H2_BODY_KIB (default 200) sizes the upload; /big answers 1.5 times as much.
const fs = require("fs");
const http2 = require("http2");

const KIB = Number(process.env.H2_BODY_KIB || 200);

function serve(args) {
  const tls = args[0] === "--tls";
  const server = tls
    ? http2.createSecureServer({ cert: fs.readFileSync(args[1]), key: fs.readFileSync(args[2]) })
    : http2.createServer();
  server.on("stream", (stream, headers) => {
    const path = headers[":path"];
    const body = [];
    stream.on("error", () => {}); // a reset stream reports one; the server carries on
    stream.on("data", (chunk) => body.push(chunk));
    stream.on("end", () => {
      const price = path.match(/^\/orders\/([^/]+)\/price$/);
      if (price) {
        stream.respond({ ":status": 200, "content-type": "application/json" });
        stream.end(JSON.stringify({ order_id: price[1], price: 120 }));
      } else if (path === "/upload") {
        const size = body.reduce((n, b) => n + b.length, 0);
        stream.respond({ ":status": 201, "content-type": "application/json" });
        stream.end(JSON.stringify({ received: size }));
      } else if (path === "/big") {
        stream.respond({ ":status": 200, "content-type": "application/octet-stream" });
        stream.end(Buffer.alloc(KIB * 1536, 0x61));
      } else if (path === "/reset") {
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      } else {
        stream.respond({ ":status": 503 });
        stream.end("unavailable");
      }
    });
  });
  server.listen(0, "127.0.0.1", () => console.log(`PORT ${server.address().port}`));
}

function request(session, headers, body) {
  return new Promise((resolve) => {
    const stream = session.request(headers);
    let size = 0;
    let status = 0;
    stream.on("response", (h) => { status = h[":status"]; });
    stream.on("data", (chunk) => { size += chunk.length; });
    stream.on("error", () => {});
    stream.on("close", () => resolve({ status, size, reset: stream.rstCode }));
    stream.end(body);
  });
}

async function call([url, order, ca]) {
  const session = http2.connect(url, ca ? { ca: fs.readFileSync(ca) } : {});
  const report = { pid: process.pid };
  report.price = await request(session, { ":method": "GET", ":path": `/orders/${order}/price` });
  report.upload = await request(
    session,
    { ":method": "POST", ":path": "/upload", "content-type": "application/octet-stream" },
    Buffer.alloc(KIB * 1024, 0x62));
  report.big = await request(session, { ":method": "GET", ":path": "/big" });
  report.reset = await request(session, { ":method": "GET", ":path": "/reset" });
  session.close();
  console.log(JSON.stringify(report));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "serve") serve(args); else call(args);
