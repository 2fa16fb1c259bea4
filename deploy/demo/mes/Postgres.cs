// A small PostgreSQL client: exactly what the MES needs (log in with trust authentication,
// run a statement with text parameters, read its rows), written against the frontend/
// backend protocol 3.0 with no library, like its AMQP client. Statements go as
// Parse/Bind/Execute/Sync (the extended protocol), so values never enter the SQL text.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Text;

namespace Mes
{
    /// The database refused a statement: its SQLSTATE and message.
    public sealed class PostgresException : Exception
    {
        public readonly string Code;

        public PostgresException(string code, string message) : base(message + " (SQLSTATE " + code + ")")
        {
            Code = code;
        }
    }

    public sealed class PostgresClient : IDisposable
    {
        readonly TcpClient tcp;
        readonly Stream stream;

        public PostgresClient(string host, int port, string user, string database)
        {
            tcp = new TcpClient(host, port);
            tcp.NoDelay = true;
            stream = tcp.GetStream();
            var startup = new MemoryStream();
            Int32(startup, 196608); // protocol 3.0
            foreach (var pair in new[] { "user", user, "database", database, "application_name", "mes" })
                CString(startup, pair);
            startup.WriteByte(0);
            var body = startup.ToArray();
            var message = new MemoryStream();
            Int32(message, body.Length + 4);
            message.Write(body, 0, body.Length);
            Send(message.ToArray());
            ReadUntilReady();
        }

        /// Runs one statement with text parameters ($1, $2, …; null for NULL); returns its
        /// rows as text. Throws PostgresException when the database refuses it.
        public List<string[]> Execute(string sql, params object[] values)
        {
            var batch = new MemoryStream();
            var parse = new MemoryStream();
            CString(parse, "");
            CString(parse, sql);
            Int16(parse, 0);
            Message(batch, 'P', parse);
            var bind = new MemoryStream();
            CString(bind, "");
            CString(bind, "");
            Int16(bind, 0); // every parameter as text
            Int16(bind, values.Length);
            foreach (var value in values)
            {
                if (value == null)
                {
                    Int32(bind, -1);
                    continue;
                }
                var bytes = Encoding.UTF8.GetBytes(Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture));
                Int32(bind, bytes.Length);
                bind.Write(bytes, 0, bytes.Length);
            }
            Int16(bind, 0); // every column as text
            Message(batch, 'B', bind);
            var execute = new MemoryStream();
            CString(execute, "");
            Int32(execute, 0);
            Message(batch, 'E', execute);
            Message(batch, 'S', new MemoryStream());
            Send(batch.ToArray());
            return ReadUntilReady();
        }

        List<string[]> ReadUntilReady()
        {
            var rows = new List<string[]>();
            PostgresException refused = null;
            while (true)
            {
                char type = (char)ReadExactly(1)[0];
                var header = ReadExactly(4);
                int length = (header[0] << 24) | (header[1] << 16) | (header[2] << 8) | header[3];
                var payload = ReadExactly(length - 4);
                switch (type)
                {
                    case 'R':
                        if (payload[3] != 0 || payload[0] != 0 || payload[1] != 0 || payload[2] != 0)
                            throw new IOException("the database asks for a password; the MES logs in with trust only");
                        break;
                    case 'D':
                        rows.Add(DataRow(payload));
                        break;
                    case 'E':
                        refused = Error(payload);
                        break;
                    case 'Z':
                        if (refused != null) throw refused;
                        return rows;
                    // ParameterStatus, BackendKeyData, ParseComplete, BindComplete,
                    // CommandComplete, NoData, NoticeResponse: nothing to keep.
                }
            }
        }

        static string[] DataRow(byte[] payload)
        {
            int at = 0;
            int columns = (payload[at++] << 8) | payload[at++];
            var row = new string[columns];
            for (int i = 0; i < columns; i++)
            {
                int n = (payload[at] << 24) | (payload[at + 1] << 16) | (payload[at + 2] << 8) | payload[at + 3];
                at += 4;
                if (n < 0) continue;
                row[i] = Encoding.UTF8.GetString(payload, at, n);
                at += n;
            }
            return row;
        }

        static PostgresException Error(byte[] payload)
        {
            string code = "", message = "";
            int at = 0;
            while (at < payload.Length && payload[at] != 0)
            {
                char field = (char)payload[at++];
                int end = Array.IndexOf(payload, (byte)0, at);
                var text = Encoding.UTF8.GetString(payload, at, end - at);
                at = end + 1;
                if (field == 'C') code = text;
                if (field == 'M') message = text;
            }
            return new PostgresException(code, message);
        }

        byte[] ReadExactly(int n)
        {
            var buffer = new byte[n];
            int read = 0;
            while (read < n)
            {
                int got = stream.Read(buffer, read, n - read);
                if (got == 0) throw new IOException("the database closed the connection");
                read += got;
            }
            return buffer;
        }

        void Send(byte[] bytes)
        {
            stream.Write(bytes, 0, bytes.Length);
        }

        static void Message(MemoryStream batch, char type, MemoryStream body)
        {
            var bytes = body.ToArray();
            batch.WriteByte((byte)type);
            Int32(batch, bytes.Length + 4);
            batch.Write(bytes, 0, bytes.Length);
        }

        static void Int32(MemoryStream s, int v)
        {
            s.WriteByte((byte)(v >> 24));
            s.WriteByte((byte)(v >> 16));
            s.WriteByte((byte)(v >> 8));
            s.WriteByte((byte)v);
        }

        static void Int16(MemoryStream s, int v)
        {
            s.WriteByte((byte)(v >> 8));
            s.WriteByte((byte)v);
        }

        static void CString(MemoryStream s, string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            s.Write(bytes, 0, bytes.Length);
            s.WriteByte(0);
        }

        public void Dispose()
        {
            tcp.Close();
        }
    }
}
