#!/usr/bin/env python3
"""The cost of a hooked TLS call, without network or spans: a client and a server
SSLObject (libssl's SSL_write_ex/SSL_read_ex) talking through memory BIOs in one
process. Prints the time per write+read pair. Usage: tls_calls.py CA CERT KEY N"""
import ssl, time, sys
ca, cert, key = sys.argv[1:4]
n = int(sys.argv[4])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.create_default_context(cafile=ca)
c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c = cctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1"); s = sctx.wrap_bio(s_in, s_out, server_side=True)
def pump():
    d = c_out.read();  d and s_in.write(d)
    d = s_out.read();  d and c_in.write(d)
while True:
    try: c.do_handshake(); break
    except ssl.SSLWantReadError: pass
    try: s.do_handshake()
    except ssl.SSLWantReadError: pass
    pump()
for _ in range(3):
    try: s.do_handshake()
    except ssl.SSLWantReadError: pass
    pump()
msg = b"x" * 64
t = time.perf_counter()
for _ in range(n):
    c.write(msg); pump(); s.read(64)
dt = time.perf_counter() - t
print(f"{dt / n * 1e6:.3f}")
