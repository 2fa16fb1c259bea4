//! A batch of exported spans as one OTLP `ExportTraceServiceRequest`, grouped by resource
//! (service), written straight from the shared spans: protobuf for OTLP/gRPC and
//! OTLP/HTTP, JSON (the Collector's file format) for files. Nothing is cloned per span.
use std::{io::Write, sync::Arc};

use bytes::BufMut;
use opentelemetry_proto::{
    tonic::{
        common::v1::InstrumentationScope, resource::v1::Resource as ProtoResource, trace::v1::Span,
    },
    transform::common::tonic::ResourceAttributesWithSchema,
};
use opentelemetry_sdk::Resource;
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, message, WireType},
    Message as _,
};

use super::ExportItem;

/// The spans of a batch per resource, in first-seen order.
fn groups(batch: &[ExportItem]) -> Vec<(&Arc<Resource>, Vec<&[u8]>)> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&[u8]>)> = Vec::new();
    for item in batch {
        match groups
            .iter_mut()
            .find(|(r, _)| Arc::ptr_eq(r, &item.resource))
        {
            Some((_, spans)) => spans.push(&item.span),
            None => groups.push((&item.resource, vec![&item.span[..]])),
        }
    }
    groups
}

fn resource(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: ResourceAttributesWithSchema::from(resource).attributes.0,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "tracer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

fn delimited(tag: u32, length: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(length as u64, buf);
}

/// `ExportTraceServiceRequest` in protobuf: `resource_spans` (1) of `resource` (1) and one
/// `scope_spans` (2) holding `scope` (1) and its `spans` (2).
pub fn protobuf(batch: &[ExportItem]) -> Vec<u8> {
    let request = Protobuf::new(batch);
    let mut buf = Vec::with_capacity(request.encoded_len());
    request.write(&mut buf);
    buf
}

/// A batch laid out as an `ExportTraceServiceRequest`, its length known before it is
/// written: gRPC's frame buffer takes it directly (no request built apart and copied in).
pub struct Protobuf<'a> {
    scope: InstrumentationScope,
    /// Per resource: its message, its spans, and the lengths of `scope_spans` and
    /// `resource_spans`.
    groups: Vec<(ProtoResource, Vec<&'a [u8]>, usize, usize)>,
}

impl<'a> Protobuf<'a> {
    pub fn new(batch: &'a [ExportItem]) -> Self {
        let scope = scope();
        let groups = groups(batch)
            .into_iter()
            .map(|(resource_of, spans)| {
                let resource = resource(resource_of);
                let scope_spans = message::encoded_len(1, &scope)
                    + spans
                        .iter()
                        .map(|s| delimited_len(2, s.len()))
                        .sum::<usize>();
                let resource_spans =
                    message::encoded_len(1, &resource) + delimited_len(2, scope_spans);
                (resource, spans, scope_spans, resource_spans)
            })
            .collect();
        Self { scope, groups }
    }

    pub fn encoded_len(&self) -> usize {
        self.groups.iter().map(|g| delimited_len(1, g.3)).sum()
    }

    pub fn write(&self, buf: &mut impl BufMut) {
        for (resource, spans, scope_spans, resource_spans) in &self.groups {
            delimited(1, *resource_spans, buf);
            message::encode(1, resource, buf);
            delimited(2, *scope_spans, buf);
            message::encode(1, &self.scope, buf);
            for span in spans {
                delimited(2, span.len(), buf);
                buf.put_slice(span);
            }
        }
    }
}

fn delimited_len(tag: u32, length: usize) -> usize {
    key_len(tag) + encoded_len_varint(length as u64) + length
}

/// The same request as one line of OTLP/JSON.
pub fn json(batch: &[ExportItem], out: &mut impl Write) -> std::io::Result<()> {
    let scope = serde_json::to_string(&scope())?;
    out.write_all(b"{\"resourceSpans\":[")?;
    for (n, (resource_of, spans)) in groups(batch).into_iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"{\"resource\":")?;
        serde_json::to_writer(&mut *out, &resource(resource_of))?;
        write!(out, ",\"scopeSpans\":[{{\"scope\":{scope},\"spans\":[")?;
        for (n, span) in spans.into_iter().enumerate() {
            if n > 0 {
                out.write_all(b",")?;
            }
            let span = Span::decode(span).map_err(std::io::Error::other)?;
            serde_json::to_writer(&mut *out, &span)?;
        }
        out.write_all(b"]}]}")?;
    }
    out.write_all(b"]}\n")
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;
    use crate::export::Exported;

    fn batch() -> Vec<ExportItem> {
        let service = |name: &str| {
            Arc::new(
                Resource::builder_empty()
                    .with_attributes([KeyValue::new("service.name", name.to_owned())])
                    .build(),
            )
        };
        let (shop, crm) = (service("shop"), service("crm"));
        let span = |name: &str| Span {
            name: name.into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Default::default()
        };
        [(&shop, "a"), (&crm, "b"), (&shop, "c")]
            .into_iter()
            .map(|(resource, name)| {
                Arc::new(Exported {
                    resource: resource.clone(),
                    span: span(name).encode_to_vec(),
                })
            })
            .collect()
    }

    fn names(request: &ExportTraceServiceRequest) -> Vec<(String, Vec<String>)> {
        request
            .resource_spans
            .iter()
            .map(|r| {
                let service = r.resource.as_ref().unwrap().attributes[0]
                    .value
                    .as_ref()
                    .map(|v| format!("{:?}", v.value))
                    .unwrap();
                let spans = r.scope_spans[0].spans.iter().map(|s| s.name.clone());
                (service, spans.collect())
            })
            .collect()
    }

    #[test]
    fn protobuf_and_json_decode_as_the_standard_request() {
        let batch = batch();
        let from_protobuf = ExportTraceServiceRequest::decode(&protobuf(&batch)[..]).unwrap();
        let mut line = Vec::new();
        json(&batch, &mut line).unwrap();
        let from_json: ExportTraceServiceRequest = serde_json::from_slice(&line).unwrap();
        for request in [&from_protobuf, &from_json] {
            assert_eq!(
                names(request),
                vec![
                    (
                        r#"Some(StringValue("shop"))"#.into(),
                        vec!["a".into(), "c".into()]
                    ),
                    (r#"Some(StringValue("crm"))"#.into(), vec!["b".into()]),
                ]
            );
            assert_eq!(
                request.resource_spans[0].scope_spans[0]
                    .scope
                    .as_ref()
                    .unwrap()
                    .name,
                "tracer"
            );
        }
        assert_eq!(from_protobuf, from_json);
    }
}
