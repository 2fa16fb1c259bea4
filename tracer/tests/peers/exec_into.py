#!/usr/bin/env python3
"""A process that is first a Python HTTP client, then another program: GETs <url> (so the
agent knows this pid as python), waits until the file <go> exists (the test creates it once
the agent has reported the request), then execs the rest of its arguments in the same
process. No tracing code. Usage: exec_into.py <url> <go> <program> [args...]"""
import os
import sys
import time
import urllib.request

urllib.request.urlopen(sys.argv[1], timeout=10).read()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
os.execvp(sys.argv[3], sys.argv[3:])
