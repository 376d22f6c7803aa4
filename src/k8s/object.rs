//! The `v1` ConfigMap and Secret, decoded to their data, and [`ObjectSource`]: where the pod
//! code looks them up (for static pods, files in the configuration directory; for API pods the
//! API server, through a cache filled before the pod code reads it).
//!
//! A ConfigMap's `data` (text) and `binaryData` (base64); a Secret's `data` (base64) and
//! `stringData` (text, which wins over `data` for the same key, as the API server merges it).
//! Keys follow the API server's rule ([`config_key_problem`]). It must never do I/O.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::validate_volumes::config_key_problem;

/// An object's keys and their bytes.
pub type Data = BTreeMap<String, Vec<u8>>;

/// A ConfigMap or a Secret: what a pod can read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataObject {
    /// `ConfigMap` or `Secret`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub data: Data,
}

/// Where ConfigMaps and Secrets come from. `Ok(None)`: there is no such object.
pub trait ObjectSource {
    fn config_map(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String>;
    fn secret(&self, namespace: &str, name: &str) -> Result<Option<DataObject>, String>;
    /// The current token of the pod's service account for a projected `serviceAccountToken`
    /// (only the API server issues them).
    fn service_account_token(
        &self,
        _pod: &super::Pod,
        _audience: &str,
        _expiration_seconds: i64,
    ) -> Result<String, String> {
        Err(
            "serviceAccountToken projections need the API server (a pod from the API server)"
                .into(),
        )
    }
}

/// No objects at all (tests, and nodes without the folders).
pub struct NoObjects;

impl ObjectSource for NoObjects {
    fn config_map(&self, _: &str, _: &str) -> Result<Option<DataObject>, String> {
        Ok(None)
    }
    fn secret(&self, _: &str, _: &str) -> Result<Option<DataObject>, String> {
        Ok(None)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    api_version: String,
    kind: String,
    metadata: RawMeta,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    binary_data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default, rename = "type")]
    kind_of_secret: Option<String>,
    #[serde(default)]
    immutable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    // Other metadata (labels, annotations, ...) is accepted and not used.
    #[serde(flatten)]
    _rest: BTreeMap<String, Value>,
}

/// Decodes a ConfigMap or Secret (`want_kind`) from a JSON value.
pub fn decode(value: Value, want_kind: &'static str) -> Result<DataObject, String> {
    let raw: Raw = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if raw.api_version != "v1" {
        return Err(format!("apiVersion {:?}: must be \"v1\"", raw.api_version));
    }
    if raw.kind != want_kind {
        return Err(format!("kind {:?}: must be {want_kind:?}", raw.kind));
    }
    let name = raw.metadata.name;
    if name.is_empty() {
        return Err("metadata.name: required".into());
    }
    if let Some(p) = super::validate::dns1123_subdomain_problem(&name) {
        return Err(format!("metadata.name: {name:?}: {p}"));
    }
    let namespace = if raw.metadata.namespace.is_empty() {
        super::pod::DEFAULT_NAMESPACE.to_string()
    } else {
        raw.metadata.namespace
    };
    let _ = (raw.kind_of_secret, raw.immutable);
    let mut data = Data::new();
    let mut put = |field: &str, key: String, bytes: Vec<u8>| -> Result<(), String> {
        if let Some(p) = config_key_problem(&key) {
            return Err(format!("{field}[{key:?}]: {p}"));
        }
        data.insert(key, bytes);
        Ok(())
    };
    let base64_field = |field: &str, key: &str, text: &str| {
        base64_decode(text).map_err(|e| format!("{field}[{key:?}]: {e}"))
    };
    if want_kind == "ConfigMap" {
        if !raw.string_data.is_empty() {
            return Err("stringData: a ConfigMap has no stringData (use data)".into());
        }
        for (k, v) in raw.binary_data {
            let bytes = base64_field("binaryData", &k, &v)?;
            put("binaryData", k, bytes)?;
        }
        for (k, v) in raw.data {
            put("data", k, v.into_bytes())?;
        }
    } else {
        if !raw.binary_data.is_empty() {
            return Err("binaryData: a Secret has no binaryData (use data)".into());
        }
        for (k, v) in raw.data {
            let bytes = base64_field("data", &k, &v)?;
            put("data", k, bytes)?;
        }
        for (k, v) in raw.string_data {
            put("stringData", k, v.into_bytes())?;
        }
    }
    Ok(DataObject {
        kind: want_kind,
        namespace,
        name,
        data,
    })
}

/// Standard base64 (RFC 4648, with padding; whitespace ignored), as the API server accepts it.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return Err("illegal base64 data: length is not a multiple of 4".into());
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for (n, chunk) in clean.chunks(4).enumerate() {
        let last = n + 1 == clean.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(format!("illegal base64 data at input byte {}", n * 4));
        }
        let mut acc: u32 = 0;
        for (i, &b) in chunk[..4 - pad].iter().enumerate() {
            let v = value(b)
                .ok_or_else(|| format!("illegal base64 data at input byte {}", n * 4 + i))?;
            acc |= u32::from(v) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGk=\n").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("AP8=").unwrap(), [0, 255]);
        for bad in ["abc", "a===", "ab=c", "*bcd", "ab==abcd"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_maps_and_secrets_decode_their_data() {
        let cm = decode(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "b"}},
                   "data": {"a.txt": "hello"}, "binaryData": {"b.bin": "AP8="}}),
            "ConfigMap",
        )
        .unwrap();
        assert_eq!(cm.namespace, "default");
        assert_eq!(cm.data["a.txt"], b"hello");
        assert_eq!(cm.data["b.bin"], [0, 255]);
        let s = decode(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ops"},
                   "type": "Opaque", "data": {"k": "b2xk", "only": "eA=="}, "stringData": {"k": "new"}}),
            "Secret",
        )
        .unwrap();
        assert_eq!(s.data["k"], b"new");
        assert_eq!(s.data["only"], b"x");
    }

    #[test]
    fn bad_objects_say_what_is_wrong() {
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
                "ConfigMap",
                "kind \"Secret\"",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
                "ConfigMap",
                "metadata.name: required",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a b": "x"}}),
                "ConfigMap",
                "data[\"a b\"]: \"a b\": a valid config key",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "!!"}}),
                "Secret",
                "data[\"k\"]: illegal base64",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "dta": {}}),
                "ConfigMap",
                "unknown field `dta`",
            ),
        ];
        for (v, kind, want) in cases {
            let err = decode(v.clone(), kind).unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
