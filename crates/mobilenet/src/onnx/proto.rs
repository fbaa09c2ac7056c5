//! The protobuf wire format, as much as ONNX files need: writing messages field by field, and
//! reading them back as (field number, value) pairs with every length checked.

/// A protobuf message being written.
#[derive(Default)]
pub(super) struct Msg(pub(super) Vec<u8>);

impl Msg {
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub(super) fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }
    pub(super) fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub(super) fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }
    pub(super) fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }
    pub(super) fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// One field of a message being read.
#[derive(Clone, Copy, Debug)]
pub(super) enum Value<'a> {
    Varint(u64),
    /// A 64-bit fixed value (doubles; ONNX's MobileNets have none we read).
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one message, in order; an `Err` names what is malformed.
pub(super) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("a field of {n} bytes runs past the end of its message"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes(b.try_into().map_err(|_| "fixed32")?))
                }
                w => return Err(format!("wire type {w} (groups are not used by ONNX)")),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            // Stop after the first error.
            self.pos = self.buf.len();
        }
        Some(field)
    }
}

/// The integers of a repeated int64 field's one occurrence: one varint, or a packed run.
pub(super) fn ints(v: Value<'_>) -> Result<Vec<i64>, String> {
    match v {
        Value::Varint(x) => Ok(vec![x as i64]),
        Value::Bytes(b) => {
            let mut f = Fields::new(b);
            let mut out = Vec::new();
            while f.pos < b.len() {
                out.push(f.varint()? as i64);
            }
            Ok(out)
        }
        _ => Err("an integer field of the wrong wire type".into()),
    }
}

/// A length-delimited field as UTF-8 text.
pub(super) fn text(v: Value<'_>) -> Result<&str, String> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| "a string that is not UTF-8".into()),
        _ => Err("a string field of the wrong wire type".into()),
    }
}

/// A length-delimited field's bytes.
pub(super) fn bytes(v: Value<'_>) -> Result<&[u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err("a message field of the wrong wire type".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_written_read_back() {
        let mut inner = Msg::default();
        inner.int(1, 300).string(2, "conv");
        let mut m = Msg::default();
        m.int(1, -2).msg(7, &inner).float(3, 1.5);
        let fields: Vec<_> = Fields::new(&m.0).collect::<Result<_, _>>().expect("valid");
        assert!(matches!(fields[0], (1, Value::Varint(v)) if v as i64 == -2));
        let (n, v) = fields[1];
        assert_eq!(n, 7);
        let inner: Vec<_> = Fields::new(bytes(v).expect("bytes"))
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(ints(inner[0].1).expect("int"), [300]);
        assert_eq!(text(inner[1].1).expect("text"), "conv");
        assert!(matches!(fields[2], (3, Value::Fixed32(b)) if f32::from_bits(b) == 1.5));
        // A length past the end is an error, not a panic.
        assert!(Fields::new(&[0x3a, 0x05, 1]).any(|f| f.is_err()));
    }
}
