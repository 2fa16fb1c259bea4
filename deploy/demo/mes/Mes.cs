// The MES stand-in: the manufacturer's proprietary C# system that tracer must observe
// without modification. It takes submitted orders from RabbitMQ (mes.orders, a queue of at
// most 3 waiting messages that drops its oldest), fetches the 3D model from the file
// storage, validates it, calculates a price (slowly), keeps its work orders in its own
// PostgreSQL database (the MES DB), reports prices — or why it rejected the model — to the
// CRM (crm.prices), and serves the MES API used by the MES UI and the B2B API. Batch jobs
// (catalogue re-pricing, stock syncs) share its queue. No tracing code.
//
// Usage: mono Mes.exe <amqp-port> <api-port> <storage-url> <mes-db-port>
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;

namespace Mes
{
    static class Program
    {
        static PostgresClient db;
        static readonly object dbLock = new object();
        static string storage;
        /// The queue's length limit, the same wherever it is declared.
        public const int QueueLimit = 8;

        static int Main(string[] args)
        {
            if (args.Length != 4)
            {
                Console.Error.WriteLine("usage: mono Mes.exe <amqp-port> <api-port> <storage-url> <mes-db-port>");
                return 2;
            }
            storage = args[2].TrimEnd('/');
            db = new PostgresClient("127.0.0.1", int.Parse(args[3]), "postgres", "postgres");
            Execute("CREATE TABLE IF NOT EXISTS work_orders (order_id text PRIMARY KEY, state text NOT NULL, price integer, " +
                    "CONSTRAINT work_orders_price_not_negative CHECK (price >= 0))");
            var amqp = new AmqpClient("127.0.0.1", int.Parse(args[0]), "guest", "guest");
            amqp.DeclareQueue("mes.orders", QueueLimit);
            amqp.DeclareQueue("crm.prices", 0);
            var api = new Thread(() => ServeApi(int.Parse(args[1]))) { IsBackground = true };
            api.Start();
            amqp.Consume("mes.orders", 1);
            Console.WriteLine("MES ready");
            while (true)
            {
                var delivery = amqp.Next();
                try
                {
                    Handle(amqp, delivery);
                }
                catch (Exception e)
                {
                    Console.Error.WriteLine("MES: failed on a message: " + e.Message);
                    amqp.Reject(delivery.Tag);
                }
            }
        }

        static string Field(string json, string name)
        {
            var m = Regex.Match(json, "\"" + name + "\"\\s*:\\s*\"([^\"]*)\"");
            return m.Success ? m.Groups[1].Value : "";
        }

        static void Handle(AmqpClient amqp, Delivery delivery)
        {
            var message = Encoding.UTF8.GetString(delivery.Body);
            var job = Field(message, "job");
            if (job != "")
            {
                // A batch job (re-pricing the catalogue, a stock sync): no order, just time.
                var seconds = Regex.Match(message, "\"seconds\"\\s*:\\s*([0-9.]+)");
                Thread.Sleep((int)(1000 * (seconds.Success ? double.Parse(seconds.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0)));
                amqp.Ack(delivery.Tag);
                return;
            }
            var order = Field(message, "order_id");
            var scenario = Field(message, "scenario");
            if (scenario == "lost-message")
            {
                // The fault: taken off the queue, acknowledged, and forgotten.
                amqp.Ack(delivery.Tag);
                return;
            }
            string model;
            using (var web = new WebClient())
                model = Field(web.DownloadString(storage + "/objects/" + order), "model");
            if (model.StartsWith("INVALID"))
            {
                Console.Error.WriteLine("MES: order " + order + ": invalid 3D model, rejected");
                Save(order, "REJECTED", 0);
                amqp.Reject(delivery.Tag);
                return;
            }
            if (scenario == "validation-error")
            {
                // The model is readable but cannot be made: the MES says why in its reply.
                Save(order, "REJECTED", 0);
                var refusal = string.Format("{{\"order_id\": \"{0}\", \"error\": \"3D model rejected: wall thickness 0.3 mm is below the 0.8 mm minimum\", \"stage\": \"rejected\"}}", order);
                amqp.Publish("crm.prices", order, Encoding.UTF8.GetBytes(refusal));
                amqp.Ack(delivery.Tag);
                return;
            }
            int price = CalculatePrice(order, model, scenario);
            Save(order, "PRICED", price);
            var reply = string.Format("{{\"order_id\": \"{0}\", \"price\": {1}, \"stage\": \"priced\"}}", order, price);
            amqp.Publish("crm.prices", order, Encoding.UTF8.GetBytes(reply));
            amqp.Ack(delivery.Tag);
        }

        static int CalculatePrice(string order, string model, string scenario)
        {
            Thread.Sleep(scenario == "slow-price" ? 3500 : 300);
            int price = 100 + model.Length % 900;
            // mes-db-failure: a discount applied twice makes the price negative, which the
            // MES DB's schema refuses.
            return scenario == "mes-db-failure" ? -price : price;
        }

        static List<string[]> Execute(string sql, params object[] values)
        {
            lock (dbLock)
                return db.Execute(sql, values);
        }

        static void Save(string order, string state, int price)
        {
            Execute("INSERT INTO work_orders (order_id, state, price) VALUES ($1, $2, $3) " +
                    "ON CONFLICT (order_id) DO UPDATE SET state = EXCLUDED.state, price = EXCLUDED.price", order, state, price);
        }

        static void SetState(string order, string state)
        {
            Execute("UPDATE work_orders SET state = $2 WHERE order_id = $1", order, state);
        }

        static string Waiting()
        {
            var list = new StringBuilder("[");
            foreach (var row in Execute("SELECT order_id, price FROM work_orders WHERE state = 'PRICED' ORDER BY order_id"))
                list.AppendFormat("{0}{{\"order_id\": \"{1}\", \"price\": {2}}}", list.Length > 1 ? ", " : "", row[0], row[1]);
            return list.Append("]").ToString();
        }

        static void ServeApi(int port)
        {
            var listener = new HttpListener();
            listener.Prefixes.Add("http://127.0.0.1:" + port + "/");
            listener.Start();
            while (true)
            {
                var context = listener.GetContext();
                ThreadPool.QueueUserWorkItem(_ =>
                {
                    try
                    {
                        Answer(context);
                    }
                    catch (Exception e)
                    {
                        Console.Error.WriteLine("MES API: " + e.Message);
                        try { context.Response.StatusCode = 500; context.Response.Close(); } catch (Exception) { }
                    }
                });
            }
        }

        static void Answer(HttpListenerContext context)
        {
            var path = context.Request.Url.AbsolutePath;
            string body;
            using (var reader = new StreamReader(context.Request.InputStream))
                body = reader.ReadToEnd();
            int status = 200;
            string reply;
            var step = Regex.Match(path, "^/orders/([^/]+)/(approve|ship)$");
            if (context.Request.HttpMethod == "GET" && path == "/orders")
            {
                reply = Waiting();
            }
            else if (context.Request.HttpMethod == "POST" && step.Success)
            {
                var order = step.Groups[1].Value;
                var state = step.Groups[2].Value == "approve" ? "APPROVED" : "SHIPPED";
                SetState(order, state);
                reply = string.Format("{{\"order_id\": \"{0}\", \"stage\": \"{1}\"}}", order, state.ToLower());
            }
            else if (context.Request.HttpMethod == "POST" && path == "/price")
            {
                var order = Field(body, "order_id");
                int price = CalculatePrice(order, order, Field(body, "scenario"));
                reply = string.Format("{{\"order_id\": \"{0}\", \"price\": {1}}}", order, price);
            }
            else
            {
                status = 404;
                reply = "{\"error\": \"not found\"}";
            }
            var bytes = Encoding.UTF8.GetBytes(reply);
            context.Response.StatusCode = status;
            context.Response.ContentType = "application/json";
            context.Response.ContentLength64 = bytes.Length;
            context.Response.OutputStream.Write(bytes, 0, bytes.Length);
            context.Response.Close();
        }
    }
}
