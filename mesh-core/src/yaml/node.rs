//! A parsed document as the loader decodes it: a tree that borrows its strings from the text
//! and keeps mappings as lists of entries, so that decoding a large set into the wire types
//! allocates only what the wire types keep.
//!
//! `serde_json::Value` (a `BTreeMap` per mapping, a `String` per key and scalar) cost as much
//! to build and drop as the YAML reading itself on a 2,000-document reload. A [`Node`]
//! decodes exactly as the same document's `Value` decodes: it drives the visitors the way
//! `serde_json`'s `Value` deserializer does (see [`Node`]'s `Deserializer` impl), and the
//! loader decodes through the `Value` ([`Node::into_value`]) whenever a node does not fit, so
//! every error is the one the `Value` gives, with its field path.

use std::borrow::Cow;

use serde::de::{self, Deserializer, IntoDeserializer, Visitor};
use serde_json::Value;

/// A YAML (or JSON) node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node<'a> {
    /// `null`, `~`, an empty value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A non-negative integer.
    U64(u64),
    /// A negative integer.
    I64(i64),
    /// A string.
    Str(Cow<'a, str>),
    /// A sequence.
    Seq(Vec<Node<'a>>),
    /// A mapping, its entries in document order (keys are distinct).
    Map(Vec<(Cow<'a, str>, Node<'a>)>),
    /// Any other scalar (a float), as serde-saphyr or serde_json read it; never a mapping
    /// or a sequence.
    Value(Value),
}

impl<'a> Node<'a> {
    /// The string, if this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            Node::Value(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The same document as a `serde_json::Value`.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::U64(n) => Value::from(n),
            Node::I64(n) => Value::from(n),
            Node::Str(s) => Value::String(s.into_owned()),
            Node::Seq(items) => Value::Array(items.into_iter().map(Node::into_value).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_value()))
                    .collect(),
            ),
            Node::Value(v) => v,
        }
    }
}

impl From<Value> for Node<'static> {
    /// A tree of the value (its mappings as entry lists), scalars kept as they are.
    fn from(v: Value) -> Self {
        match v {
            Value::Array(items) => Node::Seq(items.into_iter().map(Node::from).collect()),
            Value::Object(map) => Node::Map(
                map.into_iter()
                    .map(|(k, v)| (Cow::Owned(k), Node::from(v)))
                    .collect(),
            ),
            Value::String(s) => Node::Str(Cow::Owned(s)),
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(b),
            v => Node::Value(v),
        }
    }
}

type Error = serde_json::Error;

/// Decodes as `serde_json`'s `&Value` deserializer does: every request is answered from the
/// node's own type (`deserialize_any`), but for options (null is `None`), enums (a string is
/// a unit variant, a one-entry mapping a variant with content) and newtype structs.
impl<'de> Deserializer<'de> for &'de Node<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(*b),
            Node::U64(n) => visitor.visit_u64(*n),
            Node::I64(n) => visitor.visit_i64(*n),
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Seq(items) => {
                let mut seq = de::value::SeqDeserializer::<_, Error>::new(items.iter());
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Node::Map(entries) => {
                let mut map = de::value::MapDeserializer::<_, Error>::new(
                    entries.iter().map(|(k, v)| (Key(k), v)),
                );
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
            Node::Value(v) => v.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Null => visitor.visit_none(),
            Node::Value(v) => v.deserialize_option(visitor),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Str(s) => visitor.visit_enum(s.as_ref().into_deserializer()),
            Node::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                visitor.visit_enum(Variant(k, v))
            }
            Node::Value(v) => v.deserialize_enum(name, variants, visitor),
            // Whatever `Value` says of the rest (an error naming what was expected).
            other => other
                .clone()
                .into_value()
                .deserialize_enum(name, variants, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

impl<'de> IntoDeserializer<'de, Error> for &'de Node<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// A mapping key: a string, as `Value`'s keys are.
struct Key<'de>(&'de str);

impl<'de> IntoDeserializer<'de, Error> for Key<'de> {
    type Deserializer = de::value::BorrowedStrDeserializer<'de, Error>;

    fn into_deserializer(self) -> Self::Deserializer {
        de::value::BorrowedStrDeserializer::new(self.0)
    }
}

/// The variant of an enum written as a one-entry mapping.
struct Variant<'de, 'a>(&'de str, &'de Node<'a>);

impl<'de> de::EnumAccess<'de> for Variant<'de, '_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let v = seed.deserialize(de::value::BorrowedStrDeserializer::<Error>::new(self.0))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.1 {
            Node::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(other), &"unit variant")),
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(self.1)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.1 {
            Node::Seq(_) => self.1.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &"tuple variant")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.1 {
            Node::Map(_) => self.1.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(
                unexpected(other),
                &"struct variant",
            )),
        }
    }
}

fn unexpected<'n>(n: &'n Node<'_>) -> de::Unexpected<'n> {
    match n {
        Node::Null => de::Unexpected::Unit,
        Node::Bool(b) => de::Unexpected::Bool(*b),
        Node::U64(v) => de::Unexpected::Unsigned(*v),
        Node::I64(v) => de::Unexpected::Signed(*v),
        Node::Str(s) => de::Unexpected::Str(s),
        Node::Seq(_) => de::Unexpected::Seq,
        Node::Map(_) => de::Unexpected::Map,
        Node::Value(_) => de::Unexpected::Other("value"),
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use serde::de::DeserializeOwned;

    use super::Node;
    use crate::config::wire;

    /// What a node decodes to is what its `Value` decodes to; `false` when the node does not
    /// fit (the loader then decodes the `Value`).
    fn same<T: DeserializeOwned + Debug>(n: &Node<'_>) -> bool {
        let direct = T::deserialize(n);
        let through = serde_json::from_value::<T>(n.clone().into_value());
        match (direct, through) {
            (Ok(a), Ok(b)) => {
                assert_eq!(format!("{a:?}"), format!("{b:?}"));
                true
            }
            (Ok(a), Err(e)) => panic!("the node decodes to {a:?} where the value fails: {e}"),
            (Err(_), _) => false,
        }
    }

    fn spec_decodes_the_same(doc: &Node<'_>) -> bool {
        let Node::Map(entries) = doc else {
            return true;
        };
        let field = |name: &str| entries.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let header = Node::Map(
            entries
                .iter()
                .filter(|(k, _)| k != "spec" && k != "status")
                .cloned()
                .collect(),
        );
        let header_ok = same::<wire::DocumentHeader>(&header);
        let Some(spec) = field("spec") else {
            return header_ok;
        };
        let spec_ok = match field("kind").and_then(Node::as_str) {
            Some("VirtualService") => same::<wire::VirtualServiceSpec>(spec),
            Some("DestinationRule") => same::<wire::DestinationRuleSpec>(spec),
            Some("ServiceEntry") => same::<wire::ServiceEntrySpec>(spec),
            Some("AuthorizationPolicy") => same::<wire::AuthorizationPolicySpec>(spec),
            Some("PeerAuthentication") => same::<wire::PeerAuthenticationSpec>(spec),
            _ => true,
        };
        header_ok && spec_ok
    }

    /// Every YAML file of the repository: Istio's Bookinfo documents decode straight from
    /// the tree, the invalid corpus as it decodes from `Value`.
    #[test]
    fn documents_decode_from_the_tree_as_from_value() {
        let mut direct = 0;
        for (p, text) in crate::yaml::repository_yaml_files() {
            let docs = match crate::yaml::fast::documents(&text) {
                Some(d) => d,
                None => match serde_saphyr::from_multiple_with_options::<serde_json::Value>(
                    &text,
                    crate::yaml::options(),
                ) {
                    Ok(v) => v.into_iter().map(Node::from).collect(),
                    Err(_) => continue,
                },
            };
            let bookinfo = p.components().any(|c| c.as_os_str() == "bookinfo");
            for d in &docs {
                let ok = spec_decodes_the_same(d);
                assert!(
                    ok || !bookinfo,
                    "{}: not decoded from the tree",
                    p.display()
                );
                direct += usize::from(ok);
            }
        }
        assert!(direct >= 20, "{direct} documents decoded");
    }

    #[test]
    fn nulls_numbers_and_strings_decode_as_from_value() {
        let yaml = "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, port: {number: 9080}}\n    weight: 50\n  timeout: ~\n  fault: {abort: {percentage: {value: 10}, httpStatus: 503}}\n  headers: {request: {set: {x-a: '1'}}}\n";
        let doc = crate::yaml::fast::documents(yaml).unwrap().remove(0);
        assert!(same::<wire::VirtualServiceSpec>(&doc));
        // A float percentage (a `Value` scalar inside the tree) and a negative weight.
        let yaml = "hosts: [r]\nhttp:\n- route: [{destination: {host: r}, weight: -1}]\n  fault: {delay: {percentage: {value: 0.5}, fixedDelay: 1s}}\n";
        let doc = crate::yaml::fast::documents(yaml).unwrap().remove(0);
        assert!(same::<wire::VirtualServiceSpec>(&doc));
    }
}
