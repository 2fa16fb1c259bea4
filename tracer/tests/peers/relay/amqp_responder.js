// An AMQP service for tracer's causality tests, with amqplib on Node's one event loop:
// takes up to 30 deliveries at once (prefetch), works 50-200 ms on each (random), then
// publishes a reply (correlation id = the request's message id, to the "replies" queue)
// and acks the request. No tracing code.
// Usage: node amqp_responder.js <port> <queue> <count>; prints one JSON line per reply.
const amqp = require("amqplib");

async function main() {
  const [port, queue, count] = process.argv.slice(2);
  const connection = await amqp.connect(`amqp://guest:guest@127.0.0.1:${port}`);
  const channel = await connection.createChannel();
  await channel.checkQueue(queue);
  await channel.assertQueue("replies", { durable: false });
  await channel.prefetch(30);
  let answered = 0;
  await new Promise((resolve) => {
    channel.consume(queue, async (msg) => {
      const request = msg.properties.messageId;
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 150));
      channel.sendToQueue("replies", Buffer.from(JSON.stringify({ price: 1234 })), {
        messageId: `reply-to-${request}`,
        correlationId: request,
      });
      channel.ack(msg);
      console.log(JSON.stringify({ answered: request }));
      if (++answered >= Number(count)) resolve();
    });
  });
  await channel.close();
  await connection.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
