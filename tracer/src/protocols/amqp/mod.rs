//! AMQP 0-9-1 (RabbitMQ): frames parsed with `amq-protocol`, producer/consumer spans on
//! clients, message entry/exit on the broker.
mod calls;
mod config;
mod frames;
mod message;
mod record;
mod session;
mod spans;

#[cfg(test)]
mod tests;

pub use config::AmqpConfig;
pub use session::AmqpSession;

use super::{record::Source, Inference, Protocol, ProtocolSession, SessionContext, SessionOptions};
use crate::{capture::Direction, privacy::Policy};

pub struct Amqp;

impl Protocol for Amqp {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn sources(&self) -> &'static [Source] {
        record::SOURCES
    }

    fn attribute_policies(&self) -> &'static [(&'static str, Policy)] {
        &[
            ("messaging.rabbitmq.reply_code", Policy::Keep),
            ("messaging.rabbitmq.vhost", Policy::Name),
        ]
    }

    /// The protocol header, or (mid-stream) a strictly valid frame: known type, frame end
    /// where the size says, known class and method.
    fn infer(&self, bytes: &[u8], _direction: Direction, _mid_stream: bool) -> Inference {
        match frames::is_frame_start(bytes) {
            Some(true) => Inference::Yes,
            Some(false) => Inference::No,
            None => Inference::NeedMore,
        }
    }

    fn session(
        &self,
        context: SessionContext,
        options: &SessionOptions,
    ) -> Box<dyn ProtocolSession> {
        Box::new(AmqpSession::new(context.role, options, context.mid_stream))
    }
}
