//! A restricted unpickler: reads the plain data python-socketio's pickle
//! messages carry (protocols 0–5) and refuses everything else.
//!
//! Only opcodes that build `None`, bools, ints, floats, str, bytes, bytearray,
//! list, tuple, dict, set and frozenset are accepted, with the stack, mark and
//! memo opcodes they need. Every opcode that names or calls Python code
//! (`GLOBAL`, `STACK_GLOBAL`, `REDUCE`, `BUILD`, `INST`, `OBJ`, `NEWOBJ`,
//! `NEWOBJ_EX`, `PERSID`, `BINPERSID`, `EXT1/2/4`), the out-of-band buffer
//! opcodes, Python 2 byte strings and unknown opcodes are refused as
//! [`DecodeError::Malformed`]. Nothing is ever executed.
//!
//! Containers live in an arena and the memo holds references to them, so a
//! memo `GET` shares a container as Python does: one dict referenced twice
//! decodes as two equal dicts, filled in even when the second reference was
//! read before the first was complete. A container that contains itself is
//! refused by the depth cap when the value is built.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Number, Value};

use super::{check_size, malformed, too_deep, too_many, DecodeError, Limits};

/// A Python value as a restricted pickle can carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An int within `i64::MIN..=u64::MAX`.
    Int(i128),
    /// A float. An int beyond the 64-bit range is read as the nearest float
    /// too: the value a JavaScript client would parse from its digits. One
    /// beyond the float range is refused as malformed.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes or bytearray.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<PyValue>),
    /// A tuple.
    Tuple(Vec<PyValue>),
    /// A dict, its entries in pickle order (a repeated key appears twice;
    /// Python keeps the later value).
    Dict(Vec<(PyValue, PyValue)>),
    /// A set or frozenset, in pickle order.
    Set(Vec<PyValue>),
}

impl PyValue {
    /// The JSON value Python's `json.dumps` would write for this value, with
    /// sets as arrays and non-finite floats as `null`. Dict keys become text
    /// as `json.dumps` makes them (`1` → `"1"`, `True` → `"true"`, `None` →
    /// `"null"`); a float key is unsupported, a container key malformed.
    /// Bytes are [`DecodeError::Unsupported`] ("binary arguments").
    pub fn into_json(self) -> Result<Value, DecodeError> {
        Ok(match self {
            PyValue::None => Value::Null,
            PyValue::Bool(b) => Value::Bool(b),
            PyValue::Int(i) => int_json(i),
            PyValue::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            PyValue::Str(s) => Value::String(s),
            PyValue::Bytes(_) => {
                return Err(DecodeError::Unsupported("binary arguments".into()));
            }
            PyValue::List(items) | PyValue::Tuple(items) | PyValue::Set(items) => Value::Array(
                items
                    .into_iter()
                    .map(PyValue::into_json)
                    .collect::<Result<_, _>>()?,
            ),
            PyValue::Dict(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (key, value) in entries {
                    let key = match key {
                        PyValue::Str(s) => s,
                        PyValue::Int(i) => i.to_string(),
                        PyValue::Bool(b) => b.to_string(),
                        PyValue::None => "null".to_owned(),
                        PyValue::Float(_) => {
                            return Err(DecodeError::Unsupported("float dict key".into()));
                        }
                        _ => return Err(malformed("dict key is not a str, int, bool or None")),
                    };
                    map.insert(key, value.into_json()?);
                }
                Value::Object(map)
            }
        })
    }
}

fn int_json(i: i128) -> Value {
    if let Ok(u) = u64::try_from(i) {
        Value::Number(u.into())
    } else if let Ok(s) = i64::try_from(i) {
        Value::Number(s.into())
    } else {
        // never built: ints outside the 64-bit range are floats
        Value::Null
    }
}

/// Unpickles `bytes` within `limits`, building plain data only.
pub fn load(bytes: &[u8], limits: &Limits) -> Result<PyValue, DecodeError> {
    check_size(bytes, limits)?;
    let mut machine = Machine {
        input: bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        pushed: 0,
        limits,
    };
    let root = machine.run()?;
    let mut budget = Budget { items: 0, bytes: 0 };
    machine.build(&root, 1, &mut budget)
}

/// A value on the machine's stack or in its memo; containers by reference.
#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Object(usize),
}

#[derive(Debug)]
enum Object {
    List(Vec<Node>),
    Tuple(Vec<Node>),
    Dict(Vec<(Node, Node)>),
    Set(Vec<Node>),
    FrozenSet(Vec<Node>),
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    stack: Vec<Node>,
    /// Stack lengths at each open MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Node>,
    objects: Vec<Object>,
    pushed: usize,
    limits: &'a Limits,
}

/// What building the final value has used so far.
struct Budget {
    items: usize,
    bytes: usize,
}

fn truncated() -> DecodeError {
    malformed("truncated pickle")
}

fn not_allowed(op: u8) -> DecodeError {
    let name = match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'R' => "REDUCE",
        b'b' => "BUILD",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        _ => return malformed(format!("pickle opcode 0x{op:02x} not allowed")),
    };
    malformed(format!("pickle opcode {name} not allowed"))
}

impl Machine<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], DecodeError> {
        let left = self.input.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(truncated)?;
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The text up to the next newline (protocol 0 arguments).
    fn line(&mut self) -> Result<&[u8], DecodeError> {
        let rest = &self.input[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(truncated)?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    fn push(&mut self, node: Node) -> Result<(), DecodeError> {
        self.pushed += 1;
        if self.pushed > self.limits.max_items {
            return Err(too_many(self.limits));
        }
        self.stack.push(node);
        Ok(())
    }

    fn new_object(&mut self, object: Object) -> Result<(), DecodeError> {
        self.objects.push(object);
        self.push(Node::Object(self.objects.len() - 1))
    }

    /// Where the values above the innermost MARK start.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Node, DecodeError> {
        if self.stack.len() <= self.base() {
            return Err(malformed("pickle stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed("pickle stack underflow"))
    }

    fn top(&self) -> Result<&Node, DecodeError> {
        if self.stack.len() <= self.base() {
            return Err(malformed("pickle stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| malformed("pickle stack underflow"))
    }

    /// The values above the innermost MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Node>, DecodeError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| malformed("pickle MARK missing"))?;
        Ok(self.stack.split_off(mark))
    }

    /// The container on top of the stack, for APPEND, SETITEM and ADDITEMS.
    fn target(&mut self) -> Result<&mut Object, DecodeError> {
        match *self.top()? {
            Node::Object(i) => Ok(&mut self.objects[i]),
            _ => Err(malformed(
                "pickle adds items to a value that is not a container",
            )),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), DecodeError> {
        let node = self.top()?.clone();
        self.memo.insert(key, node);
        if self.memo.len() > self.limits.max_items {
            return Err(too_many(self.limits));
        }
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), DecodeError> {
        let node = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| malformed(format!("pickle memo key {key} missing")))?;
        self.push(node)
    }

    fn run(&mut self) -> Result<Node, DecodeError> {
        loop {
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(malformed(format!("pickle protocol {proto}")));
                    }
                }
                // FRAME: only a hint for buffered readers
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK
                b'(' => {
                    if self.marks.len() >= self.limits.max_depth {
                        return Err(too_deep(self.limits));
                    }
                    self.marks.push(self.stack.len());
                }
                // POP: a value, or the MARK when none is above it
                b'0' => {
                    if self.stack.len() > self.base() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let node = self.top()?.clone();
                    self.push(node)?;
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                // INT: also protocol 0's bools
                b'I' => {
                    let node = match self.line()? {
                        b"00" => Node::Bool(false),
                        b"01" => Node::Bool(true),
                        text => decimal_int(text)?,
                    };
                    self.push(node)?;
                }
                // LONG
                b'L' => {
                    let line = self.line()?;
                    let text = line.strip_suffix(b"L").unwrap_or(line);
                    let node = decimal_int(text)?;
                    self.push(node)?;
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let i = i32::from_le_bytes(self.array()?);
                    self.push(Node::Int(i.into()))?;
                }
                b'K' => {
                    let i = self.u8()?;
                    self.push(Node::Int(i.into()))?;
                }
                b'M' => {
                    let i = u16::from_le_bytes(self.array()?);
                    self.push(Node::Int(i.into()))?;
                }
                // LONG1, LONG4
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.u8()?)
                    } else {
                        let n = i32::from_le_bytes(self.array()?);
                        u64::try_from(n).map_err(|_| malformed("negative LONG4 length"))?
                    };
                    let node = long_int(self.take(n)?)?;
                    self.push(node)?;
                }
                // FLOAT
                b'F' => {
                    let f = std::str::from_utf8(self.line()?)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .ok_or_else(|| malformed("pickle FLOAT is not a number"))?;
                    self.push(Node::Float(f))?;
                }
                // BINFLOAT
                b'G' => {
                    let f = f64::from_be_bytes(self.array()?);
                    self.push(Node::Float(f))?;
                }
                // UNICODE (raw-unicode-escape text)
                b'V' => {
                    let s = raw_unicode_escape(self.line()?)?;
                    self.push(Node::Str(s.into()))?;
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => u64::from(self.u8()?),
                        b'X' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let s = std::str::from_utf8(self.take(n)?)
                        .map_err(|_| malformed("pickle str is not valid UTF-8"))?;
                    let node = Node::Str(s.into());
                    self.push(node)?;
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let node = Node::Bytes(self.take(n)?.into());
                    self.push(node)?;
                }
                // EMPTY_LIST, EMPTY_TUPLE, EMPTY_DICT, EMPTY_SET
                b']' => self.new_object(Object::List(Vec::new()))?,
                b')' => self.new_object(Object::Tuple(Vec::new()))?,
                b'}' => self.new_object(Object::Dict(Vec::new()))?,
                0x8f => self.new_object(Object::Set(Vec::new()))?,
                // LIST, TUPLE, DICT, FROZENSET: from the values above MARK
                b'l' => {
                    let items = self.pop_mark()?;
                    self.new_object(Object::List(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.new_object(Object::Tuple(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let entries = pairs(items)?;
                    self.new_object(Object::Dict(entries))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.new_object(Object::FrozenSet(items))?;
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.new_object(Object::Tuple(items))?;
                }
                // APPEND, APPENDS
                b'a' => {
                    let item = self.pop()?;
                    match self.target()? {
                        Object::List(list) => list.push(item),
                        _ => return Err(malformed("pickle APPEND to a value that is not a list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.target()? {
                        Object::List(list) => list.extend(items),
                        _ => return Err(malformed("pickle APPENDS to a value that is not a list")),
                    }
                }
                // SETITEM, SETITEMS
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    match self.target()? {
                        Object::Dict(dict) => dict.push((key, value)),
                        _ => return Err(malformed("pickle SETITEM on a value that is not a dict")),
                    }
                }
                b'u' => {
                    let entries = pairs(self.pop_mark()?)?;
                    match self.target()? {
                        Object::Dict(dict) => dict.extend(entries),
                        _ => {
                            return Err(malformed("pickle SETITEMS on a value that is not a dict"))
                        }
                    }
                }
                // ADDITEMS
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.target()? {
                        Object::Set(set) => set.extend(items),
                        _ => return Err(malformed("pickle ADDITEMS on a value that is not a set")),
                    }
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let key = decimal_key(self.line()?)?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.u8()?.into();
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.u32()?.into();
                    self.memo_put(key)?;
                }
                0x94 => self.memo_put(self.memo.len() as u64)?,
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let key = decimal_key(self.line()?)?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.u8()?.into();
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = self.u32()?.into();
                    self.memo_get(key)?;
                }
                other => return Err(not_allowed(other)),
            }
        }
    }

    /// The value `node` stands for, its containers copied out of the arena.
    fn build(
        &self,
        node: &Node,
        depth: usize,
        budget: &mut Budget,
    ) -> Result<PyValue, DecodeError> {
        budget.items += 1;
        if budget.items > self.limits.max_items {
            return Err(too_many(self.limits));
        }
        let mut text = |n: usize| {
            budget.bytes += n;
            if budget.bytes > self.limits.max_bytes {
                Err(DecodeError::TooLarge(format!(
                    "strings longer than {} bytes in all",
                    self.limits.max_bytes
                )))
            } else {
                Ok(())
            }
        };
        Ok(match node {
            Node::None => PyValue::None,
            Node::Bool(b) => PyValue::Bool(*b),
            Node::Int(i) => PyValue::Int(*i),
            Node::Float(f) => PyValue::Float(*f),
            Node::Str(s) => {
                text(s.len())?;
                PyValue::Str(s.to_string())
            }
            Node::Bytes(b) => {
                text(b.len())?;
                PyValue::Bytes(b.to_vec())
            }
            Node::Object(i) => {
                if depth > self.limits.max_depth {
                    return Err(too_deep(self.limits));
                }
                let list = |items: &[Node], budget: &mut Budget| {
                    items
                        .iter()
                        .map(|n| self.build(n, depth + 1, budget))
                        .collect::<Result<Vec<_>, _>>()
                };
                match &self.objects[*i] {
                    Object::List(items) => PyValue::List(list(items, budget)?),
                    Object::Tuple(items) => PyValue::Tuple(list(items, budget)?),
                    Object::Set(items) | Object::FrozenSet(items) => {
                        PyValue::Set(list(items, budget)?)
                    }
                    Object::Dict(entries) => PyValue::Dict(
                        entries
                            .iter()
                            .map(|(k, v)| {
                                Ok((
                                    self.build(k, depth + 1, budget)?,
                                    self.build(v, depth + 1, budget)?,
                                ))
                            })
                            .collect::<Result<_, DecodeError>>()?,
                    ),
                }
            }
        })
    }
}

fn pairs(items: Vec<Node>) -> Result<Vec<(Node, Node)>, DecodeError> {
    if items.len() % 2 != 0 {
        return Err(malformed("pickle dict items are not in pairs"));
    }
    let mut entries = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        entries.push((k, v));
    }
    Ok(entries)
}

/// An int in the 64-bit range, or the nearest float beyond it.
fn int_node(i: i128) -> Node {
    if i >= i128::from(i64::MIN) && i <= i128::from(u64::MAX) {
        Node::Int(i)
    } else {
        Node::Float(i as f64)
    }
}

fn float_int(f: f64) -> Result<Node, DecodeError> {
    if f.is_finite() {
        Ok(Node::Float(f))
    } else {
        Err(malformed("pickle int beyond the float range"))
    }
}

/// A protocol 0 int: optional sign, decimal digits.
fn decimal_int(text: &[u8]) -> Result<Node, DecodeError> {
    let text = std::str::from_utf8(text)
        .ok()
        .map(str::trim)
        .filter(|t| {
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| malformed("pickle INT/LONG is not a decimal integer"))?;
    match text.parse::<i128>() {
        Ok(i) => Ok(int_node(i)),
        // more digits than i128 holds: the float parser rounds them correctly
        Err(_) => float_int(
            text.parse::<f64>()
                .map_err(|_| malformed("bad pickle integer"))?,
        ),
    }
}

fn decimal_key(text: &[u8]) -> Result<u64, DecodeError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| malformed("pickle memo key is not a decimal integer"))
}

/// A LONG1/LONG4 payload: little-endian two's complement.
fn long_int(bytes: &[u8]) -> Result<Node, DecodeError> {
    let Some(&last) = bytes.last() else {
        return Ok(Node::Int(0));
    };
    let negative = last & 0x80 != 0;
    if bytes.len() <= 16 {
        let fill = if negative { 0xff } else { 0 };
        let mut buf = [fill; 16];
        buf[..bytes.len()].copy_from_slice(bytes);
        return Ok(int_node(i128::from_le_bytes(buf)));
    }
    // The magnitude, then its top 128 bits with a sticky bit for the rest,
    // which rounds to the nearest float like the exact value would.
    let mut magnitude = bytes.to_vec();
    if negative {
        let mut carry = true;
        for b in &mut magnitude {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    let Some(top) = magnitude.iter().rposition(|&b| b != 0) else {
        return Ok(Node::Int(0));
    };
    let low = top.saturating_sub(15);
    let mut mantissa = magnitude[low..=top]
        .iter()
        .rev()
        .fold(0u128, |m, &b| (m << 8) | u128::from(b));
    if magnitude[..low].iter().any(|&b| b != 0) {
        mantissa |= 1;
    }
    let exponent = i32::try_from(low * 8).unwrap_or(i32::MAX).min(2048);
    let f = mantissa as f64 * 2f64.powi(exponent);
    float_int(if negative { -f } else { f })
}

/// Python's raw-unicode-escape: Latin-1 bytes, with `\uXXXX` and
/// `\UXXXXXXXX` escapes where an odd run of backslashes precedes the `u`.
fn raw_unicode_escape(bytes: &[u8]) -> Result<String, DecodeError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|&&b| b == b'\\').count();
        let after = i + run;
        let width = match bytes.get(after) {
            Some(b'u') if run % 2 == 1 => 4,
            Some(b'U') if run % 2 == 1 => 8,
            _ => {
                out.extend(std::iter::repeat_n('\\', run));
                i = after;
                continue;
            }
        };
        out.extend(std::iter::repeat_n('\\', run - 1));
        let hex = bytes
            .get(after + 1..after + 1 + width)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| malformed("pickle UNICODE has a truncated escape"))?;
        let c = u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| malformed("pickle UNICODE escape is not a character"))?;
        out.push(c);
        i = after + 1 + width;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_default(bytes: &[u8]) -> Result<PyValue, DecodeError> {
        load(bytes, &Limits::default())
    }

    fn s(text: &str) -> PyValue {
        PyValue::Str(text.into())
    }

    #[test]
    fn scalars() {
        let cases: &[(&[u8], PyValue)] = &[
            (b"\x80\x04N.", PyValue::None),
            (b"\x80\x04\x88.", PyValue::Bool(true)),
            (b"\x80\x04\x89.", PyValue::Bool(false)),
            (b"I01\n.", PyValue::Bool(true)),
            (b"I00\n.", PyValue::Bool(false)),
            (b"I-12\n.", PyValue::Int(-12)),
            (b"L123L\n.", PyValue::Int(123)),
            (b"\x80\x02J\xff\xff\xff\xff.", PyValue::Int(-1)),
            (b"\x80\x02K\xff.", PyValue::Int(255)),
            (b"\x80\x02M\x01\x01.", PyValue::Int(257)),
            (b"\x80\x02\x8a\x00.", PyValue::Int(0)),
            (b"\x80\x02\x8a\x01\xff.", PyValue::Int(-1)),
            (b"\x80\x02\x8a\x02\xff\x00.", PyValue::Int(255)),
            (
                b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00.",
                PyValue::Int(u64::MAX.into()),
            ),
            (
                b"\x80\x02\x8b\x02\x00\x00\x00\x00\x80.",
                PyValue::Int(-32768),
            ),
            (b"F1.5\n.", PyValue::Float(1.5)),
            (
                b"\x80\x02G?\xf8\x00\x00\x00\x00\x00\x00.",
                PyValue::Float(1.5),
            ),
            (b"Vh\xe9\\u20ac\\\\x\n.", s("h\u{e9}\u{20ac}\\\\x")),
            (b"\x80\x04\x8c\x02\xc3\xa9.", s("\u{e9}")),
            (b"\x80\x03X\x01\x00\x00\x00a.", s("a")),
            (b"\x80\x04\x8d\x01\x00\x00\x00\x00\x00\x00\x00a.", s("a")),
            (b"\x80\x03C\x01z.", PyValue::Bytes(b"z".to_vec())),
            (
                b"\x80\x03B\x01\x00\x00\x00z.",
                PyValue::Bytes(b"z".to_vec()),
            ),
            (
                b"\x80\x05\x96\x01\x00\x00\x00\x00\x00\x00\x00z.",
                PyValue::Bytes(b"z".to_vec()),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(load_default(bytes).as_ref(), Ok(expected), "{bytes:x?}");
        }
    }

    #[test]
    fn ints_beyond_64_bits_are_floats() {
        let fixture = include_bytes!("fixtures/py513_emit_big_ints.pickle");
        let PyValue::Dict(entries) = load_default(fixture).unwrap() else {
            panic!()
        };
        let data = entries
            .into_iter()
            .find(|(k, _)| *k == s("data"))
            .unwrap()
            .1;
        assert_eq!(
            data,
            PyValue::Tuple(vec![
                PyValue::Int(1 << 63),
                PyValue::Int(u64::MAX.into()),
                PyValue::Float(18446744073709551616.0),
                PyValue::Int(i64::MIN.into()),
                PyValue::Float(-9223372036854775809.0),
                PyValue::Float(1e30),
            ])
        );
        // 2**200 + 1 in LONG1: rounds to 2**200
        let mut long = vec![0x80, 0x02, 0x8a, 26, 1];
        long.extend([0; 24]);
        long.extend([1, b'.']);
        assert_eq!(load_default(&long), Ok(PyValue::Float(2f64.powi(200))));
        // -(2**200) in LONG1
        let mut negative = vec![0x80, 0x02, 0x8a, 26];
        negative.extend([0; 25]);
        negative.extend([0xff, b'.']);
        assert_eq!(
            load_default(&negative),
            Ok(PyValue::Float(-(2f64.powi(200))))
        );
        let mut huge = vec![0x80, 0x02, 0x8a, 200];
        huge.extend([0x7f; 200]);
        huge.push(b'.');
        assert_eq!(
            load_default(&huge),
            Err(malformed("pickle int beyond the float range"))
        );
        let digits = format!("L{}L\n.", "9".repeat(40));
        assert_eq!(load_default(digits.as_bytes()), Ok(PyValue::Float(1e40)));
    }

    #[test]
    fn containers_and_memo() {
        // [1, (2,), {'k': {3}}, frozenset()], the list referenced again
        let bytes = b"\x80\x04](K\x01K\x02\x85}\x8c\x01k\x8f(K\x03\x90s(\x91e\x94h\x00\x86.";
        let list = PyValue::List(vec![
            PyValue::Int(1),
            PyValue::Tuple(vec![PyValue::Int(2)]),
            PyValue::Dict(vec![(s("k"), PyValue::Set(vec![PyValue::Int(3)]))]),
            PyValue::Set(vec![]),
        ]);
        assert_eq!(
            load_default(bytes),
            Ok(PyValue::Tuple(vec![list.clone(), list]))
        );
        // a memo reference read before its list is filled sees the items
        let early = b"\x80\x04]\x94h\x00\x85\x940K\x07a0h\x01.";
        let filled = PyValue::List(vec![PyValue::Int(7)]);
        assert_eq!(load_default(early), Ok(PyValue::Tuple(vec![filled])));
        // protocol 0 dict, list and memo
        let proto0 = b"(dp0\nVa\np1\n(lp2\nI1\naI2\nasg2\n.";
        assert_eq!(
            load_default(proto0),
            Ok(PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)]))
        );
        // POP and POP_MARK and DUP
        assert_eq!(load_default(b"\x80\x04K\x01K\x020."), Ok(PyValue::Int(1)));
        assert_eq!(
            load_default(b"\x80\x04K\x01(K\x02K\x031."),
            Ok(PyValue::Int(1))
        );
        assert_eq!(
            load_default(b"\x80\x04K\x012\x86."),
            Ok(PyValue::Tuple(vec![PyValue::Int(1), PyValue::Int(1)]))
        );
        assert_eq!(load_default(b"\x80\x04K\x01(0."), Ok(PyValue::Int(1)));
    }

    #[test]
    fn json_conversion() {
        let value = PyValue::Dict(vec![
            (
                PyValue::Int(-1),
                PyValue::Set(vec![PyValue::Float(f64::NAN)]),
            ),
            (PyValue::Bool(false), PyValue::Float(0.5)),
            (PyValue::None, PyValue::Tuple(vec![])),
            (s("s"), PyValue::Int(u64::MAX.into())),
        ]);
        assert_eq!(
            value.into_json(),
            Ok(serde_json::json!({"-1": [null], "false": 0.5, "null": [], "s": u64::MAX}))
        );
        let float_key = PyValue::Dict(vec![(PyValue::Float(1.5), PyValue::None)]);
        assert!(matches!(
            float_key.into_json(),
            Err(DecodeError::Unsupported(_))
        ));
        let tuple_key = PyValue::Dict(vec![(PyValue::Tuple(vec![]), PyValue::None)]);
        assert!(matches!(
            tuple_key.into_json(),
            Err(DecodeError::Malformed(_))
        ));
        let bytes = PyValue::List(vec![PyValue::Bytes(vec![1])]);
        assert_eq!(
            bytes.into_json(),
            Err(DecodeError::Unsupported("binary arguments".into()))
        );
    }

    #[test]
    fn code_is_refused() {
        for (bytes, name) in [
            (&b"cos\nsystem\n."[..], "GLOBAL"),
            (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "STACK_GLOBAL"),
            (b"\x80\x02N)R.", "REDUCE"),
            (b"\x80\x02}}b.", "BUILD"),
            (b"(ios\nsystem\n.", "INST"),
            (b"\x80\x02(N)o.", "OBJ"),
            (b"\x80\x02N)\x81.", "NEWOBJ"),
            (b"\x80\x04N)}\x92.", "NEWOBJ_EX"),
            (b"Pid\n.", "PERSID"),
            (b"\x80\x02NQ.", "BINPERSID"),
            (b"\x80\x02\x82\x01.", "EXT1"),
            (b"\x80\x02\x83\x01\x00.", "EXT2"),
            (b"\x80\x02\x84\x01\x00\x00\x00.", "EXT4"),
            (b"\x80\x05\x97.", "NEXT_BUFFER"),
            (b"\x80\x05\x98.", "READONLY_BUFFER"),
            (b"S'a'\n.", "STRING"),
            (b"\x80\x02U\x01a.", "SHORT_BINSTRING"),
        ] {
            assert_eq!(
                load_default(bytes),
                Err(malformed(format!("pickle opcode {name} not allowed"))),
                "{name}"
            );
        }
        assert_eq!(
            load_default(b"\x80\x04\xff."),
            Err(malformed("pickle opcode 0xff not allowed"))
        );
    }

    #[test]
    fn broken_pickles_are_malformed() {
        for bytes in [
            &b""[..],
            b"\x80",
            b"\x80\x06N.",
            b"\x80\x04N",
            b"\x80\x04.",
            b"\x80\x04a.",
            b"\x80\x04K\x01K\x02a.",
            b"\x80\x04}K\x01s.",
            b"\x80\x04)K\x01a.",
            b"\x80\x04](K\x01u.",
            b"\x80\x04K\x01e.",
            b"\x80\x04(K\x01d.",
            b"\x80\x04h\x05.",
            b"\x80\x04(\x85.",
            b"\x80\x04X\xff\xff\xff\xffab.",
            b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xffab.",
            b"\x80\x04\x8c\x01\xff.",
            b"\x80\x02\x8b\xff\xff\xff\xff.",
            b"Vbad\\u12\n.",
            b"V\\ud800\n.",
            b"Ix\n.",
            b"F1.5",
        ] {
            assert!(
                matches!(load_default(bytes), Err(DecodeError::Malformed(_))),
                "{bytes:x?}: {:?}",
                load_default(bytes)
            );
        }
    }

    #[test]
    fn limits_hold() {
        let limits = Limits {
            max_bytes: 64,
            max_depth: 3,
            max_items: 10,
        };
        let too_large =
            |r: Result<PyValue, DecodeError>| matches!(r, Err(DecodeError::TooLarge(_)));
        assert!(too_large(load(&[b'N'; 65], &limits)));
        // depth: (((None,),),) is 3 deep, one more is too deep
        assert!(load(b"\x80\x04N\x85\x85\x85.", &limits).is_ok());
        assert!(too_large(load(b"\x80\x04N\x85\x85\x85\x85.", &limits)));
        assert!(too_large(load(b"\x80\x04((((", &limits)));
        // items on the stack
        assert!(too_large(load(&[b'N'; 11], &limits)));
        // items when built: a tuple of the same tuple of 4 values, 4 times
        let shared = b"\x80\x04(NNNNt\x94(h\x00h\x00h\x00h\x00t.";
        assert!(too_large(load(shared, &limits)));
        // string bytes when built
        let mut strings = b"\x80\x04\x8c\x28".to_vec();
        strings.extend([b'x'; 40]);
        strings.extend(b"\x94h\x00\x86.");
        assert!(too_large(load(&strings, &limits)));
        // a list that contains itself
        assert!(too_large(load(b"\x80\x04]\x94h\x00a.", &limits)));
        let memo = Limits {
            max_items: 3,
            ..Limits::default()
        };
        assert!(too_large(load(b"\x80\x04N\x94\x94\x94\x94.", &memo)));
    }
}
