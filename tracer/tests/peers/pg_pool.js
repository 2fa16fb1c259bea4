// A node-postgres pool whose connection was opened and used BEFORE tracer starts (as after
// an agent restart), then used again: for tracer's mid-stream PostgreSQL test. Prints
// {"ready", "pid", "backend_pid"}; on a line on stdin runs an insert and a select with
// parameters and an invalid statement, prints {"done", "invalid"} (its SQLSTATE), and ends
// when stdin closes. No tracing code.
// Usage: node pg_pool.js <port> <order-id>
const { Pool } = require("pg");
const readline = require("readline");

async function main() {
  const [port, order] = process.argv.slice(2);
  const pool = new Pool({ host: "127.0.0.1", port: Number(port), user: "postgres", database: "postgres", max: 1 });
  await pool.query("CREATE TABLE IF NOT EXISTS pooled_orders (order_id text PRIMARY KEY, status text)");
  const { rows } = await pool.query("SELECT pg_backend_pid() AS pid");
  console.log(JSON.stringify({ ready: true, pid: process.pid, backend_pid: rows[0].pid }));
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  await lines.next();
  await pool.query("INSERT INTO pooled_orders (order_id, status) VALUES ($1, $2)", [order, "SUBMITTED"]);
  await pool.query("SELECT status FROM pooled_orders WHERE order_id = $1", [order]);
  let invalid = null;
  try {
    await pool.query("asdsdfdsf");
  } catch (e) {
    invalid = e.code;
  }
  console.log(JSON.stringify({ done: true, invalid }));
  await lines.next();
  await pool.end();
}

main().catch((e) => { console.error(e); process.exit(1); });
