//! The `$v: 2` update format ("document diffs") that MongoDB 5.0+ writes in `u` oplog
//! entries: `o: {$v: 2, diff: <doc diff>}`.
//!
//! A doc diff has sections `d: {field: false}` (delete), `u: {field: value}` (replace in
//! place, or append when missing), `i: {field: value}` (append at the end) and, per
//! modified sub-object or array, `s<field>: <sub-diff>`. An array sub-diff is marked
//! `a: true`, may resize with `l: <new length>` (truncate, or pad with null), and has
//! `u<index>: value` and `s<index>: <sub-diff>` entries.
//!
//! [`compute`] produces a diff between a document before and after an update (`d`, `u`,
//! `i`, then the `s` entries, the order the server writes); [`apply`] applies one the way
//! the server does when a diff meets a document it was not computed against (mongo:
//! `src/mongo/db/update/document_diff_applier.cpp`): a sub-diff for a field the document
//! lacks is ignored; one for a field of another type (object vs array vs scalar), or for an
//! array element past the array's end or of another type, writes null there.

use bson::{doc, Bson, Document};

use crate::state::{truthy, CmdError, CmdResult};

/// The diff turning `old` into `new` (empty when they are equal).
pub fn compute(old: &Document, new: &Document) -> Document {
    let mut d = Document::new();
    let mut u = Document::new();
    let mut i = Document::new();
    let mut s = Document::new();
    for (k, _) in old {
        if !new.contains_key(k) {
            d.insert(k.clone(), false);
        }
    }
    for (k, nv) in new {
        match old.get(k) {
            None => {
                i.insert(k.clone(), nv.clone());
            }
            Some(ov) if ov == nv => {}
            Some(Bson::Document(od)) if matches!(nv, Bson::Document(_)) => {
                if let Bson::Document(nd) = nv {
                    s.insert(format!("s{k}"), compute(od, nd));
                }
            }
            Some(Bson::Array(oa)) if matches!(nv, Bson::Array(_)) => {
                if let Bson::Array(na) = nv {
                    s.insert(format!("s{k}"), compute_array(oa, na));
                }
            }
            Some(_) => {
                u.insert(k.clone(), nv.clone());
            }
        }
    }
    let mut out = Document::new();
    for (name, sec) in [("d", d), ("u", u), ("i", i)] {
        if !sec.is_empty() {
            out.insert(name, sec);
        }
    }
    out.extend(s);
    out
}

fn compute_array(old: &[Bson], new: &[Bson]) -> Document {
    let mut out = doc! {"a": true};
    if new.len() < old.len() {
        out.insert("l", i32::try_from(new.len()).unwrap_or(i32::MAX));
    }
    for (idx, nv) in new.iter().enumerate() {
        match old.get(idx) {
            Some(ov) if ov == nv => {}
            Some(Bson::Document(od)) if matches!(nv, Bson::Document(_)) => {
                if let Bson::Document(nd) = nv {
                    out.insert(format!("s{idx}"), compute(od, nd));
                }
            }
            _ => {
                out.insert(format!("u{idx}"), nv.clone());
            }
        }
    }
    out
}

/// Applies a doc diff to `doc`.
pub fn apply(doc: &mut Document, diff: &Document) -> CmdResult<()> {
    for (k, v) in diff {
        match k.as_str() {
            "d" => {
                for (f, _) in section(k, v)? {
                    doc.remove(f);
                }
            }
            "u" => {
                for (f, val) in section(k, v)? {
                    // IndexMap keeps the position of a replaced key.
                    doc.insert(f.clone(), val.clone());
                }
            }
            "i" => {
                for (f, val) in section(k, v)? {
                    doc.remove(f);
                    doc.insert(f.clone(), val.clone());
                }
            }
            _ => {
                let Some(field) = k.strip_prefix('s') else {
                    return Err(CmdError::bad_value(format!(
                        "$v:2 diff has an unknown section {k:?}"
                    )));
                };
                let sub = section(k, v)?;
                // a field the document lacks: ignored
                if let Some(slot) = doc.get_mut(field) {
                    apply_sub(slot, sub)?;
                }
            }
        }
    }
    Ok(())
}

fn section<'a>(k: &str, v: &'a Bson) -> CmdResult<&'a Document> {
    match v {
        Bson::Document(d) => Ok(d),
        _ => Err(CmdError::bad_value(format!(
            "$v:2 diff section {k:?} is not an object"
        ))),
    }
}

/// Applies a sub-diff to a field or element; a target of another type becomes null (see
/// the module docs).
fn apply_sub(slot: &mut Bson, sub: &Document) -> CmdResult<()> {
    let is_array = truthy(sub.get("a"));
    let fits = matches!(
        (&*slot, is_array),
        (Bson::Array(_), true) | (Bson::Document(_), false)
    );
    if !fits {
        *slot = Bson::Null;
        return Ok(());
    }
    match slot {
        Bson::Array(arr) => apply_array(arr, sub),
        Bson::Document(d) => apply(d, sub),
        _ => Ok(()),
    }
}

fn apply_array(arr: &mut Vec<Bson>, diff: &Document) -> CmdResult<()> {
    if let Some(l) = diff.get("l") {
        let l = crate::state::as_i64(l)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| CmdError::bad_value("array diff length is not a number"))?;
        arr.resize(l, Bson::Null);
    }
    for (k, v) in diff {
        if k == "a" || k == "l" {
            continue;
        }
        let (kind, idx) = k.split_at(1);
        let idx: usize = idx
            .parse()
            .map_err(|_| CmdError::bad_value(format!("array diff has an unknown key {k:?}")))?;
        if arr.len() <= idx {
            arr.resize(idx + 1, Bson::Null);
        }
        match kind {
            "u" => arr[idx] = v.clone(),
            "s" => {
                // an element past the end was padded with null above: it stays null
                apply_sub(&mut arr[idx], section(k, v)?)?;
            }
            _ => {
                return Err(CmdError::bad_value(format!(
                    "array diff has an unknown key {k:?}"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_diffs_on_missing_or_mistyped_targets_follow_the_server() {
        let sub = doc! {"u": {"x": 1}};
        // missing field: ignored
        let mut d = doc! {"_id": 1};
        apply(&mut d, &doc! {"sa": sub.clone()}).unwrap();
        assert_eq!(d, doc! {"_id": 1});
        // another type: null
        let mut d = doc! {"_id": 1, "a": 5};
        apply(&mut d, &doc! {"sa": sub.clone()}).unwrap();
        assert_eq!(d, doc! {"_id": 1, "a": Bson::Null});
        let mut d = doc! {"_id": 1, "a": [1]};
        apply(&mut d, &doc! {"sa": sub.clone()}).unwrap();
        assert_eq!(d, doc! {"_id": 1, "a": Bson::Null});
        // matching type: applied
        let mut d = doc! {"_id": 1, "a": {"y": 2}};
        apply(&mut d, &doc! {"sa": sub.clone()}).unwrap();
        assert_eq!(d, doc! {"_id": 1, "a": {"y": 2, "x": 1}});
        // array element past the end, or of another type: null
        let mut d = doc! {"_id": 1, "arr": [{"x": 0}, 7]};
        apply(
            &mut d,
            &doc! {"sarr": {"a": true, "s1": sub.clone(), "s3": sub.clone(), "s0": sub}},
        )
        .unwrap();
        assert_eq!(
            d,
            doc! {"_id": 1, "arr": [{"x": 1}, Bson::Null, Bson::Null, Bson::Null]}
        );
    }
}
