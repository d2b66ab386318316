//! The JSON `nix show-derivation` of Nix 2.8 prints, byte for byte.
//!
//! Nix 2.8 used its own streaming JSON writer (`src/libutil/json.cc`): two-space indentation,
//! `"key": value`, `[]`/`{}` for empty containers, keys in insertion order, and strings escaped
//! as `\"`, `\\`, `\n`, `\r`, `\t`, other bytes below 0x20 as `\u00xx` (lowercase hex); every other
//! byte, including DEL and bytes that are not UTF-8, is copied raw. So the output is not always
//! valid UTF-8 (it is whatever bytes the derivation holds).

use super::{Derivation, OutputHash};
use crate::store_path::{StoreDir, StorePath};

enum Json<'a> {
    Str(std::borrow::Cow<'a, [u8]>),
    Bool(bool),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(std::borrow::Cow<'a, [u8]>, Json<'a>)>),
}

fn s(b: &[u8]) -> Json<'_> {
    Json::Str(b.into())
}

fn owned(v: String) -> Json<'static> {
    Json::Str(v.into_bytes().into())
}

fn key(k: &str) -> std::borrow::Cow<'_, [u8]> {
    k.as_bytes().into()
}

/// Write `s` as a JSON string the way Nix 2.8's `toJSON` does.
pub(crate) fn push_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => {
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn indent(out: &mut Vec<u8>, depth: usize) {
    out.push(b'\n');
    out.resize(out.len() + 2 * depth, b' ');
}

fn write(out: &mut Vec<u8>, v: &Json<'_>, depth: usize) {
    match v {
        Json::Str(b) => push_json_string(out, b),
        Json::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Json::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, depth + 1);
                write(out, item, depth + 1);
            }
            if !items.is_empty() {
                indent(out, depth);
            }
            out.push(b']');
        }
        Json::Obj(entries) => {
            out.push(b'{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, depth + 1);
                push_json_string(out, k);
                out.extend_from_slice(b": ");
                write(out, item, depth + 1);
            }
            if !entries.is_empty() {
                indent(out, depth);
            }
            out.push(b'}');
        }
    }
}

impl Derivation {
    /// `nix show-derivation` output (Nix 2.8 shape, including the final newline):
    /// `{"<drv path>": {"outputs", "inputSrcs", "inputDrvs", "system", "builder", "args", "env"}}`.
    ///
    /// Output paths are printed as recorded: call [`Derivation::fill_in_output_paths`] first so
    /// that they are the computed ones. A fixed output shows `path`, `hashAlgo` (`r:sha256`) and
    /// `hash` (hex); a floating one only `hashAlgo`; an impure one `hashAlgo` and `"impure": true`;
    /// a deferred one `{}`.
    pub fn to_show_json(&self, drv_path: &StorePath, store_dir: &StoreDir) -> Vec<u8> {
        let outputs = self
            .outputs
            .iter()
            .map(|(name, o)| {
                let mut fields = Vec::new();
                if let Some(p) = &o.path {
                    fields.push((key("path"), owned(store_dir.display(p))));
                }
                match &o.hash {
                    OutputHash::None => {}
                    OutputHash::Fixed { hash, .. } => {
                        fields.push((key("hashAlgo"), owned(o.hash_algo_field())));
                        fields.push((key("hash"), owned(hash.to_hex())));
                    }
                    OutputHash::Floating { .. } => fields.push((key("hashAlgo"), owned(o.hash_algo_field()))),
                    OutputHash::Impure { .. } => {
                        fields.push((key("hashAlgo"), owned(o.hash_algo_field())));
                        fields.push((key("impure"), Json::Bool(true)));
                    }
                }
                (key(name), Json::Obj(fields))
            })
            .collect();
        let input_srcs = self.input_srcs.iter().map(|p| owned(store_dir.display(p))).collect();
        let input_drvs = self
            .input_drvs
            .iter()
            .map(|(p, outs)| {
                (store_dir.display(p).into_bytes().into(), Json::Arr(outs.iter().map(|o| s(o.as_bytes())).collect()))
            })
            .collect();
        let body = Json::Obj(vec![
            (key("outputs"), Json::Obj(outputs)),
            (key("inputSrcs"), Json::Arr(input_srcs)),
            (key("inputDrvs"), Json::Obj(input_drvs)),
            (key("system"), s(&self.system)),
            (key("builder"), s(&self.builder)),
            (key("args"), Json::Arr(self.args.iter().map(|a| s(a)).collect())),
            (key("env"), Json::Obj(self.env.iter().map(|(k, v)| (k.as_slice().into(), s(v))).collect())),
        ]);
        let root = Json::Obj(vec![(store_dir.display(drv_path).into_bytes().into(), body)]);
        let mut out = Vec::with_capacity(4096);
        write(&mut out, &root, 0);
        out.push(b'\n');
        out
    }
}
