//! Captured-bytes tests of the HTTP session: what a server process reads and writes.
use super::HttpSession;
use crate::{
    capture::{Direction, Role},
    protocols::{
        AttrValue, Exchange, ExchangeEvent, ExchangeStatus, ProtocolSession, SessionContext,
        SessionOptions,
    },
};

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

fn server() -> HttpSession {
    HttpSession::new(
        SessionContext::new(Role::Server, IN, false),
        &SessionOptions {
            body_prefix_bytes: 64,
            ..SessionOptions::default()
        },
    )
}

fn finished(events: &[ExchangeEvent]) -> Vec<&Exchange> {
    events
        .iter()
        .filter_map(|e| {
            if let ExchangeEvent::Finished(x) = e {
                Some(x)
            } else {
                None
            }
        })
        .collect()
}

fn attr<'a>(x: &'a Exchange, name: &str) -> Option<&'a AttrValue> {
    x.attributes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn status_code(x: &Exchange) -> i64 {
    match attr(x, "http.response.status_code") {
        Some(AttrValue::Int(code)) => *code,
        other => panic!("no status code: {other:?}"),
    }
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(
        IN,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /orders/42 HTTP/1.1\r\nHost: x\r\n\r\n",
        10,
        1,
        &mut out,
    );
    s.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 20, 1, &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].name, "GET /a");
    assert_eq!(status_code(done[0]), 200);
    assert_eq!(done[1].name, "GET /orders/{id}");
    assert_eq!(status_code(done[1]), 404);
    assert_eq!(
        done[1].status,
        ExchangeStatus::Ok,
        "404 is not a server-side error"
    );
    assert_eq!((done[0].start_ktime_ns, done[0].end_ktime_ns), (10, 20));
}

#[test]
fn chunked_response_split_across_reads_byte_by_byte() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(
        IN,
        b"POST /calculate HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        1,
        1,
        &mut out,
    );
    let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
    for (i, byte) in response.iter().enumerate() {
        s.feed(OUT, &[*byte], 2 + i as u64, 1, &mut out);
    }
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(
        attr(done[0], "http.response.body.size"),
        Some(&AttrValue::Int(9))
    );
    assert_eq!(
        done[0].record.text("http_response_body").unwrap(),
        "wikipedia"
    );
    assert_eq!(done[0].record.text("http_request_body").unwrap(), "hello");
}

#[test]
fn head_204_304_and_interim_responses_have_no_body() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(IN, b"HEAD /x HTTP/1.1\r\n\r\nDELETE /y HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\nPUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nX", 1, 1, &mut out);
    s.feed(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        2,
        1,
        &mut out,
    );
    let codes: Vec<i64> = finished(&out).iter().map(|x| status_code(x)).collect();
    assert_eq!(codes, [200, 204, 304, 201]);
}

#[test]
fn server_error_is_an_error_and_garbage_is_skipped() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(
        IN,
        b"\x16\x03\x01garbage bytes\r\nmore junk\r\nGET /ok HTTP/1.1\r\n\r\n",
        1,
        1,
        &mut out,
    );
    s.feed(
        OUT,
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        2,
        1,
        &mut out,
    );
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert!(
        matches!(&done[0].status, ExchangeStatus::Error { error_type, .. } if error_type == "500")
    );
    assert!(s.bytes_skipped() > 0);
}

#[test]
fn body_larger_than_capture_is_skipped_through_the_gap() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(
        IN,
        b"POST /upload HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n",
        1,
        1,
        &mut out,
    );
    s.feed(IN, &[b'a'; 16384], 2, 1, &mut out);
    s.gap(IN, 5_000_000 - 16384, 3, &mut out);
    s.feed(IN, b"GET /next HTTP/1.1\r\n\r\n", 4, 1, &mut out);
    s.feed(OUT, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5, 1, &mut out);
    let done = finished(&out);
    assert_eq!(done.len(), 2);
    assert_eq!(
        attr(done[0], "http.request.body.size"),
        Some(&AttrValue::Int(5_000_000))
    );
    assert_eq!(
        done[0].record.text("http_request_body").unwrap().len(),
        64,
        "only the configured prefix is kept"
    );
    assert_eq!(done[1].name, "GET /next");
}

#[test]
fn gap_inside_a_head_resynchronises_at_the_next_request() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(IN, b"GET /lost HTTP/1.1\r\nHo", 1, 1, &mut out);
    s.gap(IN, 100, 2, &mut out);
    s.feed(
        IN,
        b"st: x\r\n\r\nGET /found HTTP/1.1\r\n\r\n",
        3,
        1,
        &mut out,
    );
    s.feed(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        4,
        1,
        &mut out,
    );
    let done = finished(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].name, "GET /found");
}

#[test]
fn mid_stream_session_starts_at_the_first_request_line() {
    let mut s = HttpSession::new(
        SessionContext::new(Role::Server, IN, true),
        &SessionOptions::default(),
    );
    let mut out = Vec::new();
    s.feed(
        IN,
        b"dy of a previous request\r\nGET /fresh HTTP/1.1\r\n\r\n",
        1,
        1,
        &mut out,
    );
    s.feed(
        OUT,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        2,
        1,
        &mut out,
    );
    assert_eq!(finished(&out)[0].name, "GET /fresh");
}

#[test]
fn unanswered_request_is_reported_at_close() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(
        IN,
        b"POST /calculate HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        1,
        1,
        &mut out,
    );
    s.close(9, &mut out);
    let done = finished(&out);
    assert!(
        matches!(&done[0].status, ExchangeStatus::Error { error_type, .. } if error_type == "no_response")
    );
    assert_eq!(done[0].end_ktime_ns, 9);
}

#[test]
fn response_until_close_ends_at_close() {
    let mut s = server();
    let mut out = Vec::new();
    s.feed(IN, b"GET / HTTP/1.0\r\n\r\n", 1, 1, &mut out);
    s.feed(OUT, b"HTTP/1.0 200 OK\r\n\r\nstreamed body", 2, 1, &mut out);
    assert!(finished(&out).is_empty());
    s.close(3, &mut out);
    let done = finished(&out);
    assert_eq!(
        attr(done[0], "http.response.body.size"),
        Some(&AttrValue::Int(13))
    );
}

#[test]
fn traceparent_is_carried_to_the_start_event() {
    let mut s = server();
    let mut out = Vec::new();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    s.feed(
        IN,
        format!("GET / HTTP/1.1\r\ntraceparent: {tp}\r\n\r\n").as_bytes(),
        1,
        7,
        &mut out,
    );
    let ExchangeEvent::Started(start) = &out[0] else {
        panic!("no start event")
    };
    assert_eq!(start.traceparent.as_deref(), Some(tp));
    assert_eq!(start.tid, 7);
}

/// A xorshift step: the tests' own repeatable randomness.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x2545F4914F6CDD1Du64;
    for round in 0..200 {
        let mut s = server();
        let mut out = Vec::new();
        let mut data = Vec::new();
        for _ in 0..(round * 7 % 400) {
            let r = next(&mut seed);
            data.push(if r.is_multiple_of(5) {
                b"\r\nGET / HTTP/1.1\r\n"[(r % 18) as usize]
            } else {
                r as u8
            });
        }
        for chunk in data.chunks(1 + round % 13) {
            let r = next(&mut seed);
            s.feed(
                if r.is_multiple_of(2) { IN } else { OUT },
                chunk,
                1,
                1,
                &mut out,
            );
            if r.is_multiple_of(11) {
                s.gap(IN, r % 1000, 1, &mut out);
            }
        }
        s.close(2, &mut out);
    }
}

/// One keep-alive conversation as a server sees it: (direction, bytes) in stream order.
fn conversation() -> Vec<(Direction, Vec<u8>)> {
    let body = "{\"order_id\": \"ORD-7\", \"status\": \"SUBMITTED\"}";
    vec![
        (
            IN,
            format!("POST /orders/ORD-7/submit HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}GET /orders/ORD-7 HTTP/1.1\r\nHost: shop\r\n\r\n", body.len()).into_bytes(),
        ),
        (
            OUT,
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n".to_vec(),
        ),
        (
            IN,
            b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n".to_vec(),
        ),
        (OUT, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        (IN, b"abc".to_vec()),
        (
            OUT,
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom".to_vec(),
        ),
        (IN, b"HEAD /h HTTP/1.1\r\n\r\n".to_vec()),
        (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec()),
    ]
}

/// The finished exchanges of `conversation`, each segment fed in chunks of the sizes
/// `chunk` picks (each segment keeps its own timestamp, so only the split differs).
fn exchanges_split(mut chunk: impl FnMut(usize) -> usize) -> Vec<String> {
    let mut s = server();
    let mut out = Vec::new();
    for (n, (direction, bytes)) in conversation().into_iter().enumerate() {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let size = chunk(rest.len()).clamp(1, rest.len());
            s.feed(direction, &rest[..size], 10 + n as u64, 1, &mut out);
            rest = &rest[size..];
        }
    }
    s.close(100, &mut out);
    finished(&out).iter().map(|x| format!("{x:?}")).collect()
}

#[test]
fn every_split_of_a_conversation_gives_the_unsplit_exchanges() {
    let whole = exchanges_split(|len| len);
    assert_eq!(whole.len(), 4, "{whole:#?}");
    assert_eq!(exchanges_split(|_| 1), whole, "byte by byte");
    let mut seed = 0x9E3779B97F4A7C15u64;
    for round in 0..300 {
        let most = 1 + round % 40;
        let split = exchanges_split(|_| 1 + (next(&mut seed) % most as u64) as usize);
        assert_eq!(split, whole, "round {round}, chunks of 1..={most} bytes");
    }
}
