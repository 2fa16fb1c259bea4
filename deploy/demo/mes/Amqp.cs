// A small AMQP 0-9-1 client: exactly what the MES needs (connect, declare, consume with
// acks and rejects, publish), written against the specification with no library, the way
// a proprietary system might have it. It speaks the real protocol to RabbitMQ.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Text;

namespace Mes
{
    public sealed class Delivery
    {
        public ulong Tag;
        public string RoutingKey;
        public byte[] Body;
    }

    public sealed class AmqpClient : IDisposable
    {
        const byte FrameMethod = 1, FrameHeader = 2, FrameBody = 3, FrameHeartbeat = 8, FrameEnd = 0xCE;
        readonly TcpClient tcp;
        readonly Stream stream;
        readonly object writeLock = new object();
        uint frameMax = 131072;

        public AmqpClient(string host, int port, string user, string password)
        {
            tcp = new TcpClient(host, port);
            tcp.NoDelay = true;
            stream = tcp.GetStream();
            stream.Write(new byte[] { (byte)'A', (byte)'M', (byte)'Q', (byte)'P', 0, 0, 9, 1 }, 0, 8);
            Expect(0, 10, 10); // Connection.Start
            var startOk = new Writer();
            startOk.Table(new Dictionary<string, object> { { "product", "MES" }, { "platform", "Mono" } });
            startOk.ShortStr("PLAIN");
            startOk.LongStr(Encoding.UTF8.GetBytes("\0" + user + "\0" + password));
            startOk.ShortStr("en_US");
            SendMethod(0, 10, 11, startOk);
            var tune = new Reader(Expect(0, 10, 30));
            ushort channelMax = tune.Short();
            frameMax = Math.Min(tune.Long(), frameMax);
            var tuneOk = new Writer();
            tuneOk.Short(channelMax);
            tuneOk.Long(frameMax);
            tuneOk.Short(0); // no heartbeats
            SendMethod(0, 10, 31, tuneOk);
            var open = new Writer();
            open.ShortStr("/");
            open.ShortStr("");
            open.Byte(0);
            SendMethod(0, 10, 40, open);
            Expect(0, 10, 41);
            var channelOpen = new Writer();
            channelOpen.ShortStr("");
            SendMethod(1, 20, 10, channelOpen);
            Expect(1, 20, 11);
        }

        /// A durable queue; with maxLength > 0, at most that many waiting messages, the
        /// oldest dropped to make room (x-max-length, x-overflow = drop-head).
        public void DeclareQueue(string queue, int maxLength)
        {
            var w = new Writer();
            w.Short(0);
            w.ShortStr(queue);
            w.Byte(0x02); // durable
            var arguments = new Dictionary<string, object>();
            if (maxLength > 0)
            {
                arguments["x-max-length"] = (long)maxLength;
                arguments["x-overflow"] = "drop-head";
            }
            w.Table(arguments);
            SendMethod(1, 50, 10, w);
            Expect(1, 50, 11);
        }

        public void Consume(string queue, ushort prefetch)
        {
            var qos = new Writer();
            qos.Long(0);
            qos.Short(prefetch);
            qos.Byte(0);
            SendMethod(1, 60, 10, qos);
            Expect(1, 60, 11);
            var w = new Writer();
            w.Short(0);
            w.ShortStr(queue);
            w.ShortStr("");
            w.Byte(0); // acks required
            w.Table(new Dictionary<string, object>());
            SendMethod(1, 60, 20, w);
            Expect(1, 60, 21);
        }

        /// Blocks until the next delivery.
        public Delivery Next()
        {
            while (true)
            {
                var frame = ReadFrame();
                if (frame.Type == FrameHeartbeat) continue;
                var r = new Reader(frame.Payload);
                if (frame.Type != FrameMethod || r.Short() != 60 || r.Short() != 60)
                    throw new IOException("unexpected frame while waiting for Basic.Deliver");
                r.ShortStr(); // consumer tag
                var delivery = new Delivery { Tag = r.LongLong() };
                r.Byte(); // redelivered
                r.ShortStr(); // exchange
                delivery.RoutingKey = r.ShortStr();
                var header = new Reader(ReadFrame().Payload);
                header.Short(); header.Short();
                ulong size = header.LongLong();
                var body = new MemoryStream();
                while ((ulong)body.Length < size)
                {
                    var part = ReadFrame();
                    if (part.Type != FrameBody) throw new IOException("expected a body frame");
                    body.Write(part.Payload, 0, part.Payload.Length);
                }
                delivery.Body = body.ToArray();
                return delivery;
            }
        }

        public void Ack(ulong tag)
        {
            var w = new Writer();
            w.LongLong(tag);
            w.Byte(0);
            SendMethod(1, 60, 80, w);
        }

        public void Reject(ulong tag)
        {
            var w = new Writer();
            w.LongLong(tag);
            w.Byte(0); // do not requeue
            SendMethod(1, 60, 90, w);
        }

        public void Publish(string routingKey, string messageId, byte[] body)
        {
            var method = new Writer();
            method.Short(0);
            method.ShortStr("");
            method.ShortStr(routingKey);
            method.Byte(0);
            var header = new Writer();
            header.Short(60);
            header.Short(0);
            header.LongLong((ulong)body.Length);
            header.Short(0x8000 | 0x1000 | 0x0080); // content-type, delivery-mode, message-id
            header.ShortStr("application/json");
            header.Byte(2);
            header.ShortStr(messageId);
            lock (writeLock)
            {
                WriteFrame(FrameMethod, 1, Method(60, 40, method));
                WriteFrame(FrameHeader, 1, header.ToArray());
                for (int at = 0; at < body.Length; at += (int)frameMax - 8)
                {
                    int n = Math.Min(body.Length - at, (int)frameMax - 8);
                    var part = new byte[n];
                    Array.Copy(body, at, part, 0, n);
                    WriteFrame(FrameBody, 1, part);
                }
            }
        }

        public void Dispose()
        {
            tcp.Close();
        }

        static byte[] Method(ushort cls, ushort method, Writer args)
        {
            var w = new Writer();
            w.Short(cls);
            w.Short(method);
            w.Raw(args.ToArray());
            return w.ToArray();
        }

        void SendMethod(ushort channel, ushort cls, ushort method, Writer args)
        {
            lock (writeLock) WriteFrame(FrameMethod, channel, Method(cls, method, args));
        }

        void WriteFrame(byte type, ushort channel, byte[] payload)
        {
            var w = new Writer();
            w.Byte(type);
            w.Short(channel);
            w.Long((uint)payload.Length);
            w.Raw(payload);
            w.Byte(FrameEnd);
            var bytes = w.ToArray();
            stream.Write(bytes, 0, bytes.Length);
        }

        byte[] Expect(ushort channel, ushort cls, ushort method)
        {
            var frame = ReadFrame();
            var r = new Reader(frame.Payload);
            ushort gotClass = r.Short(), gotMethod = r.Short();
            if (frame.Type != FrameMethod || frame.Channel != channel || gotClass != cls || gotMethod != method)
                throw new IOException(string.Format("expected method {0}.{1}, got {2}.{3}", cls, method, gotClass, gotMethod));
            return r.Rest();
        }

        struct Frame
        {
            public byte Type;
            public ushort Channel;
            public byte[] Payload;
        }

        Frame ReadFrame()
        {
            var head = ReadExactly(7);
            var r = new Reader(head);
            var frame = new Frame { Type = r.Byte(), Channel = r.Short() };
            frame.Payload = ReadExactly((int)r.Long());
            if (ReadExactly(1)[0] != FrameEnd) throw new IOException("bad frame end");
            return frame;
        }

        byte[] ReadExactly(int n)
        {
            var buffer = new byte[n];
            for (int at = 0; at < n;)
            {
                int got = stream.Read(buffer, at, n - at);
                if (got <= 0) throw new IOException("connection closed by the broker");
                at += got;
            }
            return buffer;
        }
    }

    sealed class Writer
    {
        readonly MemoryStream buffer = new MemoryStream();
        public void Byte(byte b) { buffer.WriteByte(b); }
        public void Short(int v) { Byte((byte)(v >> 8)); Byte((byte)v); }
        public void Long(uint v) { Short((int)(v >> 16)); Short((int)(v & 0xFFFF)); }
        public void LongLong(ulong v) { Long((uint)(v >> 32)); Long((uint)v); }
        public void Raw(byte[] bytes) { buffer.Write(bytes, 0, bytes.Length); }
        public void ShortStr(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            Byte((byte)bytes.Length);
            Raw(bytes);
        }
        public void LongStr(byte[] bytes) { Long((uint)bytes.Length); Raw(bytes); }
        /// A field table of strings ('S') and 64-bit integers ('l', as pika sends them).
        public void Table(Dictionary<string, object> fields)
        {
            var table = new Writer();
            foreach (var field in fields)
            {
                table.ShortStr(field.Key);
                if (field.Value is long)
                {
                    table.Byte((byte)'l');
                    table.LongLong((ulong)(long)field.Value);
                }
                else
                {
                    table.Byte((byte)'S');
                    table.LongStr(Encoding.UTF8.GetBytes((string)field.Value));
                }
            }
            LongStr(table.ToArray());
        }
        public byte[] ToArray() { return buffer.ToArray(); }
    }

    sealed class Reader
    {
        readonly byte[] bytes;
        int at;
        public Reader(byte[] bytes) { this.bytes = bytes; }
        public byte Byte() { return bytes[at++]; }
        public ushort Short() { return (ushort)((Byte() << 8) | Byte()); }
        public uint Long() { return ((uint)Short() << 16) | Short(); }
        public ulong LongLong() { return ((ulong)Long() << 32) | Long(); }
        public string ShortStr()
        {
            int n = Byte();
            var s = Encoding.UTF8.GetString(bytes, at, n);
            at += n;
            return s;
        }
        public byte[] Rest()
        {
            var rest = new byte[bytes.Length - at];
            Array.Copy(bytes, at, rest, 0, rest.Length);
            return rest;
        }
    }
}
