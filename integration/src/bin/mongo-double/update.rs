//! Update documents: replacements and the operators `$set`, `$unset`, `$inc`, `$push`
//! (with `$each`), `$min`, `$max` and `$setOnInsert`, on dotted paths.

use bson::{Bson, Document};

use crate::matcher;
use crate::state::{CmdError, CmdResult};

/// Is this an operator update (`{$set: ...}`) rather than a replacement document?
pub fn is_operator_update(u: &Document) -> bool {
    u.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn immutable_id() -> CmdError {
    CmdError::new(
        66,
        "ImmutableField",
        "Performing an update on the path '_id' would modify the immutable field '_id'",
    )
}

/// The document a replacement update produces (the old `_id` kept, first).
pub fn replace(old: &Document, replacement: &Document) -> CmdResult<Document> {
    let mut out = Document::new();
    if let Some(id) = old.get("_id") {
        if let Some(new_id) = replacement.get("_id") {
            if !matcher::equal(id, new_id) {
                return Err(immutable_id());
            }
        }
        out.insert("_id", id.clone());
    }
    for (k, v) in replacement {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// Applies the operators of `update` to `doc` (`inserting` enables `$setOnInsert`).
pub fn apply_operators(doc: &mut Document, update: &Document, inserting: bool) -> CmdResult<()> {
    for (op, args) in update {
        let Bson::Document(args) = args else {
            return Err(CmdError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {:?} instead. For example: \
                 {{$mod: {{<field>: ...}}}} not {{{op}: {args}}}",
                args.element_type()
            )));
        };
        for (path, v) in args {
            if path == "_id" && op != "$setOnInsert" {
                let same = doc.get("_id").is_some_and(|id| matcher::equal(id, v));
                if !(op == "$set" && same) {
                    return Err(immutable_id());
                }
            }
            match op.as_str() {
                "$set" => set_path(doc, path, v.clone())?,
                "$setOnInsert" => {
                    if inserting {
                        set_path(doc, path, v.clone())?;
                    }
                }
                "$unset" => unset_path(doc, path),
                "$inc" => {
                    let cur = matcher::get_path(doc, path).cloned();
                    let sum = add(cur.as_ref(), v, path)?;
                    set_path(doc, path, sum)?;
                }
                "$min" | "$max" => {
                    let cur = matcher::get_path(doc, path).cloned();
                    let replace = match &cur {
                        None => true,
                        Some(c) => {
                            let o = matcher::cmp(v, c);
                            (op == "$min" && o.is_lt()) || (op == "$max" && o.is_gt())
                        }
                    };
                    if replace {
                        set_path(doc, path, v.clone())?;
                    }
                }
                "$push" => {
                    let items = match v {
                        Bson::Document(d) if d.contains_key("$each") => match d.get("$each") {
                            Some(Bson::Array(a)) => a.clone(),
                            _ => return Err(CmdError::bad_value("$each must be an array")),
                        },
                        other => vec![other.clone()],
                    };
                    let mut arr = match matcher::get_path(doc, path) {
                        None => Vec::new(),
                        Some(Bson::Array(a)) => a.clone(),
                        Some(other) => {
                            return Err(CmdError::new(
                                2,
                                "BadValue",
                                format!(
                                    "The field '{path}' must be an array but is of type {:?}",
                                    other.element_type()
                                ),
                            ))
                        }
                    };
                    arr.extend(items);
                    set_path(doc, path, Bson::Array(arr))?;
                }
                other => {
                    return Err(CmdError::failed_to_parse(format!(
                        "Unknown modifier: {other}. Expected a valid update modifier or \
                         pipeline-style update specified as an array"
                    )))
                }
            }
        }
    }
    Ok(())
}

fn add(cur: Option<&Bson>, inc: &Bson, path: &str) -> CmdResult<Bson> {
    let bad = || {
        CmdError::type_mismatch(format!(
            "Cannot apply $inc to a value of non-numeric type (field '{path}')"
        ))
    };
    let cur = cur.cloned().unwrap_or(Bson::Int32(0));
    Ok(match (&cur, inc) {
        (Bson::Int32(a), Bson::Int32(b)) => match a.checked_add(*b) {
            Some(s) => Bson::Int32(s),
            None => Bson::Int64(i64::from(*a) + i64::from(*b)),
        },
        (Bson::Int32(_) | Bson::Int64(_), Bson::Int32(_) | Bson::Int64(_)) => {
            let a = crate::state::as_i64(&cur).ok_or_else(bad)?;
            let b = crate::state::as_i64(inc).ok_or_else(bad)?;
            Bson::Int64(a.wrapping_add(b))
        }
        (Bson::Double(a), _) => Bson::Double(a + num(inc).ok_or_else(bad)?),
        (_, Bson::Double(b)) => Bson::Double(num(&cur).ok_or_else(bad)? + b),
        _ => return Err(bad()),
    })
}

fn num(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

/// Sets a dotted path, creating intermediate objects.
pub fn set_path(doc: &mut Document, path: &str, v: Bson) -> CmdResult<()> {
    match path.split_once('.') {
        None => {
            doc.insert(path.to_string(), v);
            Ok(())
        }
        Some((head, rest)) => {
            if !doc.contains_key(head) {
                doc.insert(head.to_string(), Document::new());
            }
            match doc.get_mut(head) {
                Some(Bson::Document(sub)) => set_path(sub, rest, v),
                Some(Bson::Array(arr)) => {
                    let (idx, rest2) = match rest.split_once('.') {
                        Some((i, r)) => (i, Some(r)),
                        None => (rest, None),
                    };
                    let i: usize = idx.parse().map_err(|_| {
                        CmdError::new(28, "PathNotViable", format!("Cannot create field '{idx}' in array '{head}'"))
                    })?;
                    if arr.len() <= i {
                        arr.resize(i + 1, Bson::Null);
                    }
                    match rest2 {
                        None => {
                            arr[i] = v;
                            Ok(())
                        }
                        Some(r) => {
                            if !matches!(arr[i], Bson::Document(_)) {
                                arr[i] = Bson::Document(Document::new());
                            }
                            match &mut arr[i] {
                                Bson::Document(sub) => set_path(sub, r, v),
                                _ => Ok(()),
                            }
                        }
                    }
                }
                _ => Err(CmdError::new(
                    28,
                    "PathNotViable",
                    format!("Cannot create field '{rest}' in element {{{head}: ...}}"),
                )),
            }
        }
    }
}

/// Removes a dotted path (a missing path is fine).
pub fn unset_path(doc: &mut Document, path: &str) {
    match path.split_once('.') {
        None => {
            doc.remove(path);
        }
        Some((head, rest)) => {
            if let Some(Bson::Document(sub)) = doc.get_mut(head) {
                unset_path(sub, rest);
            }
        }
    }
}
