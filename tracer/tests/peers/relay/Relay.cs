// Service B of tracer's causality tests, C# under Mono like the MES: HttpListener with
// async handlers on the thread pool, calling C with HttpClient (async/await, a new
// connection per call). For each request from A (GET /work/<id> or POST /work
// {"item_id"}) it answers with C's reply. With mode "id" the call carries the id
// (/price/<id>); with "none" it does not. The `tag` cookie is the tests' witness only.
// No tracing code. Usage: mono Relay.exe <C port> <id|none>; prints "PORT <n>".
using System;
using System.IO;
using System.Net;
using System.Net.Http;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading.Tasks;

static class Relay
{
    static int cPort;
    static string mode;
    static readonly HttpClient client = new HttpClient(new HttpClientHandler { UseCookies = false });

    static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    static async Task Handle(HttpListenerContext context)
    {
        try
        {
            string item;
            var path = context.Request.Url.AbsolutePath;
            if (path.StartsWith("/work/"))
            {
                item = path.Substring("/work/".Length);
            }
            else
            {
                string body;
                using (var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8))
                    body = await reader.ReadToEndAsync();
                item = Regex.Match(body, "\"item_id\"\\s*:\\s*\"([^\"]+)\"").Groups[1].Value;
            }
            var target = mode == "id" ? "/price/" + item : "/price";
            var call = new HttpRequestMessage(HttpMethod.Get, "http://127.0.0.1:" + cPort + target);
            call.Headers.ConnectionClose = true;
            call.Headers.Add("Cookie", "tag=" + item);
            var answer = await client.SendAsync(call);
            var reply = await answer.Content.ReadAsByteArrayAsync();
            context.Response.ContentType = "application/json";
            context.Response.ContentLength64 = reply.Length;
            await context.Response.OutputStream.WriteAsync(reply, 0, reply.Length);
            context.Response.Close();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine(e);
            context.Response.StatusCode = 502;
            context.Response.Close();
        }
    }

    static async Task Serve(HttpListener listener)
    {
        while (true)
        {
            var context = await listener.GetContextAsync();
            _ = Handle(context); // each request on its own, as Kestrel and HttpListener services do
        }
    }

    static void Main(string[] args)
    {
        cPort = int.Parse(args[0]);
        mode = args[1];
        var port = FreePort();
        var listener = new HttpListener();
        listener.Prefixes.Add("http://127.0.0.1:" + port + "/");
        listener.Start();
        Console.WriteLine("PORT " + port);
        Console.Out.Flush();
        Serve(listener).Wait();
    }
}
