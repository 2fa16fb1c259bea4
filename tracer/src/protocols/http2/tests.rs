//! HTTP/2 session tests.
