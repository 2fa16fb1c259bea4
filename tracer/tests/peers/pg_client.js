// PostgreSQL client for tracer's database tests, using node-postgres as any application
// would: simple queries (no parameters) and extended ones; no tracing code.
// Usage: node pg_client.js <port> <order-id>
const { Client } = require("pg");

async function main() {
  const [port, order] = process.argv.slice(2);
  const client = new Client({ host: "127.0.0.1", port: Number(port), user: "postgres", database: "postgres" });
  await client.connect();
  await client.query("CREATE TABLE IF NOT EXISTS orders (order_id text PRIMARY KEY, status text, email text)");
  await client.query(`INSERT INTO orders (order_id, status) VALUES ('${order}', 'NEW')`);
  let duplicate = null;
  try {
    await client.query(`INSERT INTO orders (order_id, status) VALUES ('${order}', 'AGAIN')`);
  } catch (e) {
    duplicate = e.code;
  }
  await client.query("BEGIN");
  await client.query("DELETE FROM orders WHERE order_id = $1", [order]);
  await client.query("ROLLBACK");
  const { rows } = await client.query("SELECT count(*) AS n FROM orders WHERE order_id = $1", [order]);
  await client.end();
  console.log(JSON.stringify({ duplicate, rows: Number(rows[0].n) }));
}

main().catch((e) => { console.error(e); process.exit(1); });
