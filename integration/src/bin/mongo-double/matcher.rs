//! Query filters, BSON comparison, sorting and projection — the subset the double serves.
//!
//! Comparison follows the server's canonical type order (MinKey < null < numbers <
//! strings < objects < arrays < binary < ObjectId < bool < date < timestamp < regex <
//! MaxKey), numbers compared by value across int32/int64/double. Filters support field
//! equality (dotted paths; an array field matches when an element is equal), `$eq`, `$ne`,
//! `$gt`, `$gte`, `$lt`, `$lte` (within one type bracket, as the server does), `$in`,
//! `$nin`, `$exists`, and `$and` / `$or` / `$nor`.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::state::{CmdError, CmdResult};

fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => 13,
        Bson::MaxKey => 14,
    }
}

fn as_f64(v: &Bson) -> f64 {
    match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        _ => f64::NAN,
    }
}

/// Total order over BSON values (the server's sort order).
pub fn cmp(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        _ if ra == 2 => as_f64(a).total_cmp(&as_f64(b)),
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Document(x), Bson::Document(y)) => cmp_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = cmp(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

fn cmp_docs(x: &Document, y: &Document) -> Ordering {
    for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
        let o = type_rank(va)
            .cmp(&type_rank(vb))
            .then_with(|| ka.cmp(kb))
            .then_with(|| cmp(va, vb));
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

/// Values equal in the server's sense (1 == 1.0 == NumberLong(1)).
pub fn equal(a: &Bson, b: &Bson) -> bool {
    cmp(a, b) == Ordering::Equal
}

/// The value at a dotted path (numeric parts index arrays).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Does `doc` match `filter`?
pub fn matches(doc: &Document, filter: &Document) -> CmdResult<bool> {
    for (k, cond) in filter {
        let ok = match k.as_str() {
            "$and" | "$or" | "$nor" => {
                let Bson::Array(subs) = cond else {
                    return Err(CmdError::bad_value(format!("{k} must be an array")));
                };
                let mut results = Vec::with_capacity(subs.len());
                for s in subs {
                    let Bson::Document(s) = s else {
                        return Err(CmdError::bad_value(format!("{k} entries must be objects")));
                    };
                    results.push(matches(doc, s)?);
                }
                match k.as_str() {
                    "$and" => results.iter().all(|r| *r),
                    "$or" => results.iter().any(|r| *r),
                    _ => !results.iter().any(|r| *r),
                }
            }
            "$comment" => true,
            _ if k.starts_with('$') => {
                return Err(CmdError::bad_value(format!("unknown top level operator: {k}")))
            }
            _ => field_matches(get_path(doc, k), cond)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn is_operator_doc(cond: &Bson) -> Option<&Document> {
    match cond {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Some(d),
        _ => None,
    }
}

fn eq_or_contains(value: Option<&Bson>, want: &Bson) -> bool {
    match value {
        None => matches!(want, Bson::Null),
        Some(v) => {
            equal(v, want)
                || matches!(v, Bson::Array(items) if items.iter().any(|i| equal(i, want)))
        }
    }
}

fn field_matches(value: Option<&Bson>, cond: &Bson) -> CmdResult<bool> {
    let Some(ops) = is_operator_doc(cond) else {
        return Ok(eq_or_contains(value, cond));
    };
    for (op, arg) in ops {
        let ok = match op.as_str() {
            "$eq" => eq_or_contains(value, arg),
            "$ne" => !eq_or_contains(value, arg),
            "$gt" | "$gte" | "$lt" | "$lte" => {
                let test = |v: &Bson| {
                    if type_rank(v) != type_rank(arg) {
                        return false;
                    }
                    let o = cmp(v, arg);
                    match op.as_str() {
                        "$gt" => o == Ordering::Greater,
                        "$gte" => o != Ordering::Less,
                        "$lt" => o == Ordering::Less,
                        _ => o != Ordering::Greater,
                    }
                };
                match value {
                    None => false,
                    Some(Bson::Array(items)) if !matches!(arg, Bson::Array(_)) => {
                        items.iter().any(test)
                    }
                    Some(v) => test(v),
                }
            }
            "$in" | "$nin" => {
                let Bson::Array(list) = arg else {
                    return Err(CmdError::bad_value(format!("{op} needs an array")));
                };
                let found = list.iter().any(|w| eq_or_contains(value, w));
                if op == "$in" {
                    found
                } else {
                    !found
                }
            }
            "$exists" => value.is_some() == crate::state::truthy(Some(arg)),
            other => {
                return Err(CmdError::bad_value(format!("unknown operator: {other}")));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sorts by a sort spec (`{field: 1|-1, ...}`); `$natural` keeps (or reverses) the order.
pub fn sort_docs<T>(items: &mut [T], spec: &Document, doc_of: impl Fn(&T) -> &Document) {
    if spec.is_empty() {
        return;
    }
    if let Some(dir) = spec.get("$natural") {
        if crate::state::as_i64(dir).unwrap_or(1) < 0 {
            items.reverse();
        }
        return;
    }
    items.sort_by(|a, b| {
        for (k, dir) in spec {
            let va = get_path(doc_of(a), k).cloned().unwrap_or(Bson::Null);
            let vb = get_path(doc_of(b), k).cloned().unwrap_or(Bson::Null);
            let mut o = cmp(&va, &vb);
            if crate::state::as_i64(dir).unwrap_or(1) < 0 {
                o = o.reverse();
            }
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

/// Applies a top-level inclusion or exclusion projection (`_id` kept unless excluded).
pub fn project(doc: &Document, proj: &Document) -> Document {
    if proj.is_empty() {
        return doc.clone();
    }
    let including = proj
        .iter()
        .any(|(k, v)| k != "_id" && crate::state::truthy(Some(v)));
    let id_excluded = proj.get("_id").is_some_and(|v| !crate::state::truthy(Some(v)));
    let mut out = Document::new();
    for (k, v) in doc {
        let keep = if k == "_id" {
            !id_excluded
        } else if including {
            proj.get(k).is_some_and(|p| crate::state::truthy(Some(p)))
        } else {
            proj.get(k).is_none_or(|p| crate::state::truthy(Some(p)))
        };
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}
