// The MES stand-in: the manufacturer's proprietary C# system that tracer must observe
// without modification. It takes submitted orders from RabbitMQ (mes.orders), fetches the
// 3D model from the file storage, calculates a price (slowly), keeps its own SQLite
// database, reports prices to the CRM (crm.prices), and serves the MES API used by the
// MES UI and the B2B API. No tracing code.
//
// Usage: mono Mes.exe <amqp-port> <api-port> <storage-url> <database-file>
using System;
using System.IO;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;
using Mono.Data.Sqlite;

namespace Mes
{
    static class Program
    {
        static SqliteConnection db;
        static readonly object dbLock = new object();
        static string storage;

        static int Main(string[] args)
        {
            if (args.Length != 4)
            {
                Console.Error.WriteLine("usage: mono Mes.exe <amqp-port> <api-port> <storage-url> <database-file>");
                return 2;
            }
            storage = args[2].TrimEnd('/');
            db = new SqliteConnection("Data Source=" + args[3]);
            db.Open();
            Execute("CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, state TEXT NOT NULL, price INTEGER)");
            var amqp = new AmqpClient("127.0.0.1", int.Parse(args[0]), "guest", "guest");
            amqp.DeclareQueue("mes.orders");
            amqp.DeclareQueue("crm.prices");
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
            int price = CalculatePrice(order, model, scenario);
            Save(order, "PRICED", price);
            var reply = string.Format("{{\"order_id\": \"{0}\", \"price\": {1}, \"stage\": \"priced\"}}", order, price);
            amqp.Publish("crm.prices", order, Encoding.UTF8.GetBytes(reply));
            amqp.Ack(delivery.Tag);
        }

        static int CalculatePrice(string order, string model, string scenario)
        {
            Thread.Sleep(scenario == "slow-price" ? 3500 : 300);
            return 100 + model.Length % 900;
        }

        static void Execute(string sql, params object[] values)
        {
            lock (dbLock)
                using (var command = new SqliteCommand(sql, db))
                {
                    for (int i = 0; i < values.Length; i++)
                        command.Parameters.AddWithValue("@p" + i, values[i]);
                    command.ExecuteNonQuery();
                }
        }

        static void Save(string order, string state, int price)
        {
            Execute("INSERT OR REPLACE INTO orders (order_id, state, price) VALUES (@p0, @p1, @p2)", order, state, price);
        }

        static string Waiting()
        {
            var list = new StringBuilder("[");
            lock (dbLock)
                using (var command = new SqliteCommand("SELECT order_id, price FROM orders WHERE state = 'PRICED' ORDER BY order_id", db))
                using (var rows = command.ExecuteReader())
                    while (rows.Read())
                        list.AppendFormat("{0}{{\"order_id\": \"{1}\", \"price\": {2}}}", list.Length > 1 ? ", " : "", rows.GetString(0), rows.GetInt64(1));
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
                ThreadPool.QueueUserWorkItem(_ => Answer(context));
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
                Save(order, state, 0);
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
