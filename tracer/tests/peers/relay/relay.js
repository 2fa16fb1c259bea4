// Service B of tracer's causality tests, Node.js (one event loop): for each request from A
// (GET /work/<id> or POST /work {"item_id"}) it calls C with http.request on a new
// connection and answers when C has. With mode "id" the call carries the id (GET
// /price/<id>); with "none" it does not (GET /price). The `tag` cookie is the tests'
// witness only. No tracing code. Usage: node relay.js <C port> <id|none> [listen port];
// prints "PORT <n>".
const http = require("http");

const [cPort, mode] = process.argv.slice(2);

function item(req, body) {
  if (req.url.startsWith("/work/")) return req.url.split("/")[2];
  return JSON.parse(body).item_id;
}

const server = http.createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => { body += chunk; });
  req.on("end", () => {
    const id = item(req, body);
    const path = mode === "id" ? `/price/${id}` : "/price";
    const call = http.request(
      { host: "127.0.0.1", port: Number(cPort), path, agent: false, headers: { Cookie: `tag=${id}` } },
      (answer) => {
        let got = "";
        answer.on("data", (chunk) => { got += chunk; });
        answer.on("end", () => {
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end(got);
        });
      },
    );
    call.on("error", (e) => { res.writeHead(502); res.end(String(e)); });
    call.end();
  });
});
server.listen(Number(process.argv[4] || 0), "127.0.0.1", () => console.log(`PORT ${server.address().port}`));
