//! Kubernetes' `resource.Quantity`: `500m`, `1.5Gi`, `128974848`, `129e6`, `0.1`.
//!
//! Owns the wire form ([`Quantity`]: the text as written, a JSON string or number) and its exact
//! grammar ([`Quantity::parse`]), from apimachinery's `quantity.go`:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <sign>            ::= "+" | "-"
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
//! ```
//!
//! The text is kept and parsed where it is used, so that a bad quantity becomes the container's
//! `CreateContainerConfigError` naming the field instead of rejecting the whole manifest.
//! A parsed value is exact: a rational `mantissa × 10^exp10 × 2^exp2`, from which
//! [`Parsed::milli_value`] and [`Parsed::value`] round up as Kubernetes' `MilliValue` and
//! `Value` do. Values beyond `i64` (Kubernetes' own limit for both) are errors, never wrapped.
//! Never does: I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A quantity as written in a manifest: `"500m"`, `"1Gi"`, or a JSON number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Wire", into = "String")]
pub struct Quantity(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum Wire {
    Text(String),
    Int(i64),
    Float(f64),
}

impl From<Wire> for Quantity {
    fn from(w: Wire) -> Quantity {
        Quantity(match w {
            Wire::Text(s) => s,
            Wire::Int(n) => n.to_string(),
            Wire::Float(f) => f.to_string(),
        })
    }
}

impl From<Quantity> for String {
    fn from(q: Quantity) -> String {
        q.0
    }
}

impl From<&str> for Quantity {
    fn from(s: &str) -> Quantity {
        Quantity(s.to_string())
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a quantity's text is not a usable quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError {
    pub text: String,
    pub problem: &'static str,
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quantity {:?}: {}", self.text, self.problem)
    }
}

impl std::error::Error for QuantityError {}

/// A parsed quantity: `sign × mantissa × 10^exp10 × 2^exp2`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i64,
    exp2: u32,
}

/// Digits kept in the mantissa: `u128` holds 38; more are rejected rather than rounded.
const MAX_DIGITS: usize = 36;

impl Quantity {
    /// Parses the text with Kubernetes' grammar.
    pub fn parse(&self) -> Result<Parsed, QuantityError> {
        let text = self.0.as_str();
        let err = |problem| QuantityError {
            text: text.to_string(),
            problem,
        };
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            Some(_) => (false, text),
            None => return Err(err("empty")),
        };
        let number_end = rest
            .find(|ch: char| !ch.is_ascii_digit() && ch != '.')
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(err(
                "not a quantity: want a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, e3, ...)",
            ));
        }
        let digits = format!("{int}{frac}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > MAX_DIGITS {
            return Err(err("too many digits"));
        }
        let mantissa: u128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| err("too many digits"))?
        };
        let mut exp10 = -(frac.len() as i64);
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            s if s.starts_with(['e', 'E']) => {
                let e = &s[1..];
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("bad exponent: want e or E and an integer, as in 1e3"));
                }
                // Anything past this is far outside i64 either way (or rounds to the smallest unit).
                let e: i64 = e
                    .parse()
                    .unwrap_or(if e.starts_with('-') { -10_000 } else { 10_000 });
                exp10 += e.clamp(-10_000, 10_000);
            }
            _ => {
                return Err(err(
                    "unknown suffix: want one of m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent",
                ));
            }
        }
        Ok(Parsed {
            negative: negative && mantissa != 0,
            mantissa,
            exp10,
            exp2,
        })
    }
}

impl Parsed {
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// The value in units of `10^scale`, rounded up (away from zero, as Kubernetes' `ScaledValue`),
    /// or `None` when it does not fit in an `i64`.
    fn scaled(&self, scale: i64) -> Option<i64> {
        let mut v = self.mantissa.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let exp = self.exp10 - scale;
        if exp >= 0 {
            for _ in 0..exp {
                v = v.checked_mul(10)?;
            }
        } else if v != 0 {
            let mut rounded_up = false;
            for _ in 0..(-exp) {
                if v == 0 {
                    break;
                }
                rounded_up |= v % 10 != 0;
                v /= 10;
            }
            if rounded_up {
                v += 1;
            }
        }
        let v = i64::try_from(v).ok()?;
        Some(if self.negative { -v } else { v })
    }

    /// The value in thousandths (CPU millicores), rounded up.
    pub fn milli_value(&self) -> Option<i64> {
        self.scaled(-3)
    }

    /// The value in units (bytes), rounded up.
    pub fn value(&self) -> Option<i64> {
        self.scaled(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(s: &str) -> Result<Option<i64>, String> {
        Quantity::from(s)
            .parse()
            .map(|p| p.value())
            .map_err(|e| e.to_string())
    }

    fn milli(s: &str) -> Option<i64> {
        Quantity::from(s).parse().unwrap().milli_value()
    }

    #[test]
    fn values_follow_the_kubernetes_grammar() {
        for (text, want) in [
            ("0", 0),
            ("1", 1),
            ("+1", 1),
            ("-1", -1),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 123 * 1024 * 1024),
            ("1Ki", 1024),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("1E", 1_000_000_000_000_000_000),
            ("1E3", 1000),
            ("1e+3", 1000),
            ("5e-1", 1),
            ("100m", 1),
            ("1.", 1),
            (".5", 1),
            ("0.1", 1),
            ("7Ei", 7 << 60),
            ("000001", 1),
        ] {
            assert_eq!(value(text), Ok(Some(want)), "{text}");
        }
    }

    #[test]
    fn milli_values_round_up() {
        for (text, want) in [
            ("500m", 500),
            ("0.5", 500),
            ("1", 1000),
            ("0.1m", 1),
            ("2.0001", 2001),
            ("1e-3", 1),
            ("1e-1000", 1),
            ("-0.5m", -1),
            ("0m", 0),
        ] {
            assert_eq!(milli(text), Some(want), "{text}");
        }
    }

    #[test]
    fn absurd_and_garbage_quantities_are_errors() {
        assert_eq!(value("1e1000"), Ok(None), "too large for i64");
        assert_eq!(value("9Ei"), Ok(None));
        assert_eq!(value("9223372036854775807"), Ok(Some(i64::MAX)));
        assert_eq!(value("9223372036854775808"), Ok(None));
        for bad in [
            "", "abc", "1Gb", "1 Gi", "1..2", "Gi", "-", ".", "1e", "1e+", "1ee3", "1.5.5", "0x10",
            "1mi", "1KI", "1e3.5", " 1",
        ] {
            let got = value(bad);
            assert!(got.is_err(), "{bad:?}: {got:?}");
        }
        assert!(
            value("1Gb")
                .unwrap_err()
                .contains("quantity \"1Gb\": unknown suffix"),
            "{:?}",
            value("1Gb")
        );
        assert!(
            value(&"1".repeat(40))
                .unwrap_err()
                .contains("too many digits")
        );
        assert!(Quantity::from("-1").parse().unwrap().is_negative());
        assert!(!Quantity::from("-0").parse().unwrap().is_negative());
    }

    #[test]
    fn json_numbers_and_strings_both_decode() {
        let q: Vec<Quantity> = serde_json::from_str(r#"["1Gi", 2, 0.5]"#).unwrap();
        assert_eq!(q, ["1Gi", "2", "0.5"].map(Quantity::from));
        assert_eq!(serde_json::to_string(&q[0]).unwrap(), "\"1Gi\"");
    }
}
