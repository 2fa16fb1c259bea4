//! A message's header fields in one buffer with their places: one allocation for the text
//! and one for the places, however many fields (owning a `String` per name and per value
//! was a fifth of the HTTP parser's time).

/// Header fields in order. Names are as given (lower-cased when parsed from HTTP/1.x),
/// values trimmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// (name start, name end = value start, value end) in `text`, per field.
    places: Vec<(u32, u32, u32)>,
}

impl Headers {
    /// Fields parsed by httparse: names lower-cased, values trimmed, invalid UTF-8 replaced.
    pub fn from_parsed(fields: &[httparse::Header<'_>]) -> Self {
        let size = fields.iter().map(|f| f.name.len() + f.value.len()).sum();
        let mut headers = Self {
            text: String::with_capacity(size),
            places: Vec::with_capacity(fields.len()),
        };
        for field in fields {
            let start = headers.text.len();
            headers.text.push_str(field.name);
            headers.text[start..].make_ascii_lowercase();
            // Nearly every value is valid UTF-8: checked in one pass, copied once.
            match std::str::from_utf8(field.value) {
                Ok(value) => headers.push_value(start, value),
                Err(_) => headers.push_value(start, &String::from_utf8_lossy(field.value)),
            }
        }
        headers
    }

    /// Adds a field, its name as given.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.push_value(start, value);
    }

    fn push_value(&mut self, name_start: usize, value: &str) {
        let name_end = self.text.len();
        self.text.push_str(value.trim());
        self.places
            .push((name_start as u32, name_end as u32, self.text.len() as u32));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.places.iter().map(|&(start, middle, end)| {
            (
                &self.text[start as usize..middle as usize],
                &self.text[middle as usize..end as usize],
            )
        })
    }

    /// The first value of `name`, compared exactly (parsed names are lower case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The first value of each of `names` (ASCII case ignored) that is not empty, in the
    /// order of `names`, added to `out`: one pass over the fields for all of them.
    pub fn first_values(&self, names: &[String], out: &mut Vec<String>) {
        const AT_ONCE: usize = 8;
        if names.len() > AT_ONCE {
            let (head, rest) = names.split_at(AT_ONCE);
            self.first_values(head, out);
            return self.first_values(rest, out);
        }
        let mut first: [Option<&str>; AT_ONCE] = [None; AT_ONCE];
        for (field, value) in self.iter() {
            for (name, slot) in names.iter().zip(first.iter_mut()) {
                if slot.is_none() && field.eq_ignore_ascii_case(name) {
                    *slot = Some(value);
                }
            }
        }
        let found = first.iter().take(names.len()).flatten();
        out.extend(found.filter(|v| !v.is_empty()).map(|v| (*v).to_owned()));
    }

    /// The first value of `name`, ASCII case ignored.
    pub fn get_ignore_case(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Self::default();
        for (name, value) in fields {
            headers.push(name.as_ref(), value.as_ref());
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_fields_keep_their_order_with_names_lower_cased_and_values_trimmed() {
        let fields = [
            httparse::Header {
                name: "Content-Type",
                value: b" text/plain ",
            },
            httparse::Header {
                name: "X-Order-Id",
                value: b"A\xffB",
            },
            httparse::Header {
                name: "content-type",
                value: b"second",
            },
        ];
        let headers = Headers::from_parsed(&fields);
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [
                ("content-type", "text/plain"),
                ("x-order-id", "A\u{fffd}B"),
                ("content-type", "second")
            ]
        );
        assert_eq!(headers.get("content-type"), Some("text/plain"));
        assert_eq!(headers.get("Content-Type"), None);
        assert_eq!(headers.get_ignore_case("X-ORDER-ID"), Some("A\u{fffd}B"));
        assert_eq!(headers.iter().count(), 3);
        let built: Headers = [("Host", "a")].into_iter().collect();
        assert_eq!(built.get_ignore_case("host"), Some("a"));
        assert!(Headers::default().iter().next().is_none());
    }

    #[test]
    fn first_values_are_what_a_lookup_per_name_finds_in_the_order_of_the_names() {
        let headers: Headers = [
            ("Host", "shop"),
            ("X-User-Id", ""),
            ("Order-Id", "A1"),
            ("x-user-id", "u2"),
            ("order-id", "A3"),
            ("User_Id", "u4"),
        ]
        .into_iter()
        .collect();
        let names: Vec<String> = ["user_id", "x-user-id", "order-id", "missing", "host"]
            .map(String::from)
            .to_vec();
        let one_by_one: Vec<String> = names
            .iter()
            .filter_map(|n| headers.get_ignore_case(n))
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect();
        // The first x-user-id is empty: no value, as a lookup of the name says.
        assert_eq!(one_by_one, ["u4", "A1", "shop"]);
        let mut out = Vec::new();
        headers.first_values(&names, &mut out);
        assert_eq!(out, one_by_one);
        // More names than one pass holds: the same answer, in order.
        let many: Vec<String> = (0..10)
            .map(|i| format!("n{i}"))
            .chain(names.iter().cloned())
            .collect();
        out.clear();
        headers.first_values(&many, &mut out);
        assert_eq!(out, one_by_one);
    }
}
