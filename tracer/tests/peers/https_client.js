// An unmodified Node.js HTTPS client for tracer's TLS tests: POSTs a JSON order with an
// Authorization header COUNT times over one keep-alive connection, then prints a JSON
// report. Usage: node https_client.js PORT PATH COUNT CA ORDER TOKEN
const fs = require("fs");
const https = require("https");

const [port, path, count, ca, order, token] = process.argv.slice(2);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fs.readFileSync(ca) });
const statuses = [];

function one(left) {
  if (left === 0) {
    agent.destroy();
    console.log(JSON.stringify({ pid: process.pid, statuses }));
    return;
  }
  const req = https.request(
    { host: "127.0.0.1", port: Number(port), path, method: "POST", agent,
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` } },
    (res) => {
      res.resume();
      res.on("end", () => { statuses.push(res.statusCode); one(left - 1); });
    });
  req.on("error", (e) => { console.error(e); process.exit(1); });
  req.end(JSON.stringify({ order_id: order, item: "ring" }));
}
one(Number(count));
