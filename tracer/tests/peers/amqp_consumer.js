// RabbitMQ consumer for tracer's AMQP tests, using amqplib as any application would; no
// tracing code. Consumes --count messages from a queue and acks them, except the message
// ids given with --reject or --nack; prints one JSON line per message (with the wall
// clock at which it arrived).
// With --hold it stays (connection closed) until its stdin closes, so a test can keep it
// alive until tracer has named it from /proc.
// Usage: node amqp_consumer.js <port> <queue> <count> [--reject id]... [--nack id]... [--work-ms n] [--hold]
const amqp = require("amqplib");

async function main() {
  const [port, queue, count, ...rest] = process.argv.slice(2);
  const reject = new Set();
  const nack = new Set();
  let workMs = 0;
  const hold = rest.includes("--hold");
  for (let i = 0; i < rest.length; i += 2) {
    if (rest[i] === "--reject") reject.add(rest[i + 1]);
    if (rest[i] === "--nack") nack.add(rest[i + 1]);
    if (rest[i] === "--work-ms") workMs = Number(rest[i + 1]);
  }
  const connection = await amqp.connect(`amqp://guest:guest@127.0.0.1:${port}`);
  const channel = await connection.createChannel();
  await channel.checkQueue(queue);
  await channel.prefetch(1);
  let seen = 0;
  await new Promise((resolve) => {
    channel.consume(queue, async (msg) => {
      const receivedAt = Date.now();
      const id = msg.properties.messageId;
      await new Promise((r) => setTimeout(r, workMs));
      let verdict = "ack";
      if (reject.has(id)) { channel.reject(msg, false); verdict = "reject"; }
      else if (nack.has(id)) { channel.nack(msg, false, false); verdict = "nack"; }
      else channel.ack(msg);
      console.log(JSON.stringify({ message_id: id, verdict, bytes: msg.content.length, received_at_ms: receivedAt }));
      if (++seen >= Number(count)) resolve();
    });
  });
  await channel.close();
  await connection.close();
  if (hold) {
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
