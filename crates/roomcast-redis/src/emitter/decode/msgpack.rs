//! msgpack as Node's Socket.IO emitters write it (the notepack.io encoder),
//! read into the JSON a Node server would pass on.
//!
//! A Node server decodes these messages with notepack.io and sends the
//! arguments to clients through `JSON.stringify`. This reader gives the same
//! JSON:
//! - nil and fixext1 type 0 (`d4 00 xx`, how notepack.io 2.x wrote
//!   `undefined`) are `null` in arrays; a map entry whose value is `undefined`
//!   is left out, as `JSON.stringify` leaves out undefined properties;
//! - NaN and ±Infinity are `null`;
//! - a timestamp (extension type -1, what notepack.io 3.x writes for a
//!   `Date`) and notepack.io 2.x's fixext8 type 0 date are the date's ISO
//!   8601 text (`Date.prototype.toJSON`), `null` outside JavaScript's date
//!   range;
//! - bin (a `Buffer`) and any other extension are unsupported ("binary
//!   arguments", "msgpack extension type N"); map keys must be strings.
//!
//! Lengths are checked against the bytes left before anything is allocated,
//! and [`Limits`] caps depth and value count. Trailing bytes are malformed,
//! as notepack.io refuses them too.

use serde_json::{Map, Number, Value};

use super::{check_size, malformed, too_deep, too_many, DecodeError, Limits};

/// Reads one msgpack value, the whole of `bytes`, as JSON.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Value, DecodeError> {
    check_size(bytes, limits)?;
    let mut reader = Reader {
        input: bytes,
        pos: 0,
        items: 0,
        limits,
    };
    let value = reader.value(1)?.unwrap_or(Value::Null);
    if reader.pos != bytes.len() {
        return Err(malformed(format!(
            "{} bytes after the msgpack value",
            bytes.len() - reader.pos
        )));
    }
    Ok(value)
}

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
    limits: &'a Limits,
}

fn truncated() -> DecodeError {
    malformed("truncated msgpack")
}

fn binary() -> DecodeError {
    DecodeError::Unsupported("binary arguments".into())
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.left() {
            return Err(truncated());
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?).into())
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| truncated())
    }

    /// One value at nesting `depth`; `None` is JavaScript's `undefined`.
    fn value(&mut self, depth: usize) -> Result<Option<Value>, DecodeError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(too_many(self.limits));
        }
        let marker = self.u8()?;
        Ok(Some(match marker {
            0x00..=0x7f => Value::from(marker),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.list(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(marker & 0x1f))?,
            0xc0 => Value::Null,
            0xc1 => return Err(malformed("msgpack marker 0xc1")),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => return Err(binary()),
            0xc7 => {
                let n = usize::from(self.u8()?);
                return self.ext(n, false);
            }
            0xc8 => {
                let n = self.u16()?;
                return self.ext(n, false);
            }
            0xc9 => {
                let n = self.u32()?;
                return self.ext(n, false);
            }
            0xca => float(f32::from_be_bytes(self.array()?).into()),
            0xcb => float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::from(self.u8()?),
            0xcd => Value::from(u16::from_be_bytes(self.array()?)),
            0xce => Value::from(u32::from_be_bytes(self.array()?)),
            0xcf => Value::from(u64::from_be_bytes(self.array()?)),
            0xd0 => Value::from(i8::from_be_bytes(self.array()?)),
            0xd1 => Value::from(i16::from_be_bytes(self.array()?)),
            0xd2 => Value::from(i32::from_be_bytes(self.array()?)),
            0xd3 => Value::from(i64::from_be_bytes(self.array()?)),
            0xd4 => return self.ext(1, true),
            0xd5 => return self.ext(2, true),
            0xd6 => return self.ext(4, true),
            0xd7 => return self.ext(8, true),
            0xd8 => return self.ext(16, true),
            0xd9 => {
                let n = usize::from(self.u8()?);
                self.str(n)?
            }
            0xda => {
                let n = self.u16()?;
                self.str(n)?
            }
            0xdb => {
                let n = self.u32()?;
                self.str(n)?
            }
            0xdc => {
                let n = self.u16()?;
                self.list(n, depth)?
            }
            0xdd => {
                let n = self.u32()?;
                self.list(n, depth)?
            }
            0xde => {
                let n = self.u16()?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.u32()?;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::from(marker as i8),
        }))
    }

    fn str(&mut self, n: usize) -> Result<Value, DecodeError> {
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| malformed("msgpack str is not valid UTF-8"))?;
        Ok(Value::String(s.to_owned()))
    }

    /// Checks that `n` values of at least `min_bytes` each can follow, before
    /// anything is allocated for them.
    fn check_count(&self, n: usize, min_bytes: usize, depth: usize) -> Result<(), DecodeError> {
        if depth > self.limits.max_depth {
            return Err(too_deep(self.limits));
        }
        if n.saturating_mul(min_bytes) > self.left() {
            return Err(truncated());
        }
        if n > self.limits.max_items.saturating_sub(self.items) {
            return Err(too_many(self.limits));
        }
        Ok(())
    }

    fn list(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.check_count(n, 1, depth)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?.unwrap_or(Value::Null));
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.check_count(n, 2, depth)?;
        let mut map = Map::new();
        for _ in 0..n {
            let Some(Value::String(key)) = self.value(depth + 1)? else {
                return Err(malformed("msgpack map key is not a string"));
            };
            if let Some(value) = self.value(depth + 1)? {
                map.insert(key, value);
            }
        }
        Ok(Value::Object(map))
    }

    /// An extension of `n` data bytes, its type byte next; `fixed`: a fixext.
    /// Type 0 is notepack.io's own: `undefined` as fixext1, a date as
    /// fixext8, an `ArrayBuffer` otherwise.
    fn ext(&mut self, n: usize, fixed: bool) -> Result<Option<Value>, DecodeError> {
        let kind = self.u8()? as i8;
        let data = self.take(n)?;
        match (kind, n) {
            (0, 1) if fixed => Ok(None),
            (0, 8) if fixed => {
                // notepack.io 2.x: milliseconds, high word signed
                let high = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let low = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                Ok(Some(date_json((i128::from(high) << 32) | i128::from(low))))
            }
            (-1, 4) => {
                let seconds = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                Ok(Some(date_json(i128::from(seconds) * 1000)))
            }
            (-1, 8) => {
                let word = u64::from_be_bytes(data.try_into().map_err(|_| truncated())?);
                let nanos = i128::from(word >> 34);
                let seconds = i128::from(word & 0x3_ffff_ffff);
                Ok(Some(date_json(seconds * 1000 + nanos / 1_000_000)))
            }
            (-1, 12) => {
                let nanos = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let seconds = i64::from_be_bytes(data[4..].try_into().map_err(|_| truncated())?);
                // JavaScript truncates the fractional milliseconds toward zero
                let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
                Ok(Some(date_json(total / 1_000_000)))
            }
            (-1, _) => Err(malformed("msgpack timestamp of a bad length")),
            (0, _) => Err(binary()),
            (kind, _) => Err(DecodeError::Unsupported(format!(
                "msgpack extension type {kind}"
            ))),
        }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// JavaScript's largest date, in milliseconds either side of 1970.
const MAX_DATE_MS: i128 = 8_640_000_000_000_000;

/// What `JSON.stringify` writes for a `Date` of `ms` milliseconds since 1970.
fn date_json(ms: i128) -> Value {
    match i64::try_from(ms) {
        Ok(ms) if i128::from(ms).abs() <= MAX_DATE_MS => Value::String(iso_8601(ms)),
        _ => Value::Null,
    }
}

/// `Date.prototype.toISOString`: `YYYY-MM-DDTHH:MM:SS.sssZ`, the year as
/// `±YYYYYY` outside 0..=9999.
fn iso_8601(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_date(days);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:06}", -year)
    } else {
        format!("+{year:06}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01, counted in 400-year
/// eras of 146 097 days that start on 0000-03-01 (so that the leap day ends
/// each era's year).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let since_0000_03_01 = days + 719_468;
    let era = since_0000_03_01.div_euclid(146_097);
    let day_of_era = since_0000_03_01.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // months counted from March, of 153 days per 5 months
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_default(bytes: &[u8]) -> Result<Value, DecodeError> {
        read(bytes, &Limits::default())
    }

    #[test]
    fn every_format() {
        let cases: &[(&[u8], Value)] = &[
            (b"\x00", json!(0)),
            (b"\x7f", json!(127)),
            (b"\xff", json!(-1)),
            (b"\xe0", json!(-32)),
            (b"\xc0", json!(null)),
            (b"\xc2", json!(false)),
            (b"\xc3", json!(true)),
            (b"\xcc\xff", json!(255)),
            (b"\xcd\xff\xff", json!(65535)),
            (b"\xce\xff\xff\xff\xff", json!(4294967295u32)),
            (b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", json!(u64::MAX)),
            (b"\xd0\x80", json!(-128)),
            (b"\xd1\x80\x00", json!(-32768)),
            (b"\xd2\x80\x00\x00\x00", json!(i32::MIN)),
            (b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00", json!(i64::MIN)),
            (b"\xca\x3f\xc0\x00\x00", json!(1.5)),
            (b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", json!(1.5)),
            (b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", json!(null)),
            (b"\xca\xff\x80\x00\x00", json!(null)),
            (b"\xa3abc", json!("abc")),
            (b"\xd9\x01a", json!("a")),
            (b"\xda\x00\x01a", json!("a")),
            (b"\xdb\x00\x00\x00\x01a", json!("a")),
            (b"\x92\x01\xa1x", json!([1, "x"])),
            (b"\xdc\x00\x01\x01", json!([1])),
            (b"\xdd\x00\x00\x00\x01\x01", json!([1])),
            (b"\x81\xa1k\x01", json!({"k": 1})),
            (b"\xde\x00\x01\xa1k\x01", json!({"k": 1})),
            (b"\xdf\x00\x00\x00\x01\xa1k\x01", json!({"k": 1})),
            (b"\x82\xa1k\x01\xa1k\x02", json!({"k": 2})),
            // undefined: null in an array, left out of a map, null at the top
            (b"\x92\xd4\x00\x00\xc0", json!([null, null])),
            (b"\x82\xa1a\xd4\x00\x00\xa1b\xc0", json!({"b": null})),
            (b"\xd4\x00\x00", json!(null)),
        ];
        for (bytes, expected) in cases {
            assert_eq!(read_default(bytes).as_ref(), Ok(expected), "{bytes:x?}");
        }
    }

    #[test]
    fn dates_read_as_javascript_writes_them() {
        let cases: &[(&[u8], Value)] = &[
            (
                b"\xd6\xff\x00\x00\x00\x00",
                json!("1970-01-01T00:00:00.000Z"),
            ),
            (
                b"\xd6\xff\x65\x93\x7d\x25",
                json!("2024-01-02T03:04:05.000Z"),
            ),
            // timestamp 64: 678 ms in nanoseconds, above the seconds
            (
                b"\xd7\xff\xa1\xa5\xd6\x00\x65\x93\x7d\x25",
                json!("2024-01-02T03:04:05.678Z"),
            ),
            // timestamp 96 before 1970: -1 s + 500 ms
            (
                b"\xc7\x0c\xff\x1d\xcd\x65\x00\xff\xff\xff\xff\xff\xff\xff\xff",
                json!("1969-12-31T23:59:59.500Z"),
            ),
            // timestamp 96 at year 10000 and beyond JavaScript's range
            (
                b"\xc7\x0c\xff\x00\x00\x00\x00\x00\x00\x00\x3a\xff\xf4\x41\x80",
                json!("+010000-01-01T00:00:00.000Z"),
            ),
            (
                b"\xc7\x0c\xff\x00\x00\x00\x00\x7f\xff\xff\xff\xff\xff\xff\xff",
                json!(null),
            ),
            // notepack.io 2.x: milliseconds
            (
                b"\xd7\x00\x00\x00\x01\x8c\xc8\x20\xdb\x2e",
                json!("2024-01-02T03:04:05.678Z"),
            ),
            (
                b"\xd7\x00\xff\xff\xff\xff\xff\xff\xff\xff",
                json!("1969-12-31T23:59:59.999Z"),
            ),
            (
                b"\xd7\x00\xff\xff\xc7\x6e\x39\x4a\x74\x00",
                json!("-000001-01-01T00:00:00.000Z"),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(read_default(bytes).as_ref(), Ok(expected), "{bytes:x?}");
        }
        assert_eq!(iso_8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_8601(-62_135_596_800_000), "0001-01-01T00:00:00.000Z");
        assert_eq!(
            iso_8601(8_640_000_000_000_000),
            "+275760-09-13T00:00:00.000Z"
        );
        assert_eq!(
            iso_8601(-8_640_000_000_000_000),
            "-271821-04-20T00:00:00.000Z"
        );
    }

    #[test]
    fn unsupported_values() {
        let binary = DecodeError::Unsupported("binary arguments".into());
        for bytes in [
            &b"\xc4\x01z"[..],
            b"\xc5\x00\x01z",
            b"\xc6\x00\x00\x00\x01z",
            b"\x91\xc4\x00",
            b"\xc7\x01\x00z",
            b"\xd5\x00zz",
        ] {
            assert_eq!(read_default(bytes), Err(binary.clone()), "{bytes:x?}");
        }
        assert_eq!(
            read_default(b"\xd4\x05z"),
            Err(DecodeError::Unsupported("msgpack extension type 5".into()))
        );
    }

    #[test]
    fn malformed_values() {
        for bytes in [
            &b""[..],
            b"\xc1",
            b"\x92\x01",
            b"\xa3ab",
            b"\xa2\xff\xfe",
            b"\x81\x01\x01",
            b"\x81\xc0\x01",
            b"\x81\x91\xa1a\x01",
            b"\x81\xd4\x00\x00\x01",
            b"\xcd\x01",
            b"\x01\x02",
            b"\xc7\x03\xff\x00\x00\x00",
            b"\xdb\xff\xff\xff\xffab",
            b"\xdd\xff\xff\xff\xff\x01",
            b"\xdf\xff\xff\xff\xff\x01",
            b"\xc9\xff\xff\xff\xff\x05",
        ] {
            assert!(
                matches!(read_default(bytes), Err(DecodeError::Malformed(_))),
                "{bytes:x?}: {:?}",
                read_default(bytes)
            );
        }
    }

    #[test]
    fn limits_hold() {
        let limits = Limits {
            max_bytes: 100,
            max_depth: 3,
            max_items: 10,
        };
        let too_large = |r: Result<Value, DecodeError>| matches!(r, Err(DecodeError::TooLarge(_)));
        assert!(read(b"\x91\x91\x91\x01", &limits).is_ok());
        assert!(too_large(read(b"\x91\x91\x91\x91\x01", &limits)));
        assert!(too_large(read(&[0x91; 1000], &Limits::default())));
        assert!(read(&[0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0], &limits).is_ok());
        assert!(too_large(read(
            &[0x9a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &limits
        )));
        assert!(too_large(read(&[0xc0; 101], &limits)));
    }
}
