//! Business attributes (`app.order.id`, `app.user.id`, `app.order.status`, custom `app.*`)
//! extracted from exchanges by rules, with defaults that need no configuration.
mod json;
mod rules;

pub use rules::{
    Extracted, Extractor, ExtractorError, ORDER_FROM_TRACE, ORDER_ID, ORDER_STATUS, USER_ID,
};

#[cfg(test)]
mod tests;
