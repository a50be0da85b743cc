//! The plan as SQL: one `SELECT` over the user's query that yields, per row, the
//! record's key, its payload (Vitally's field names), the payload's hash, and what is
//! wrong with it, if anything. Postgres streams it; nothing is held here.

use crate::definition::{Object, Options};
use crate::mapping::{Column, ColumnType, Plan, Target};

/// The largest record we send, in bytes of JSON. Vitally documents no limit; a
/// batch of 100 such records stays under the body sizes web APIs commonly accept.
pub const MAX_RECORD_BYTES: usize = 512_000;

/// How many arguments a Postgres function takes at most (`FUNC_MAX_ARGS`).
const MAX_ARGUMENTS: usize = 100;

/// `"name"` with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled; with a backslash, `E'...'` with backslashes
/// doubled too, as Postgres's `quote_literal` does: the literal then reads the same
/// whatever `standard_conforming_strings` says (a plain `'\'` would end early with it off).
pub fn quote_literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

const ISO_UTC: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

/// A date-time as Vitally's Analytics and REST APIs take it (RFC 3339: date, time with
/// seconds, a zone), as a regular expression literal.
const ISO_8601: &str = r"'^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$'";

/// A column's value as an argument of `jsonb_build_object`, which turns it into JSON by
/// its type as `to_jsonb` would (without a `to_jsonb` call per value: a third faster).
fn value(reference: &str, ty: ColumnType) -> String {
    let c = reference;
    match ty {
        ColumnType::TimestampTz => format!("to_char({c} AT TIME ZONE 'UTC', {ISO_UTC})"),
        ColumnType::Timestamp => format!("to_char({c}, {ISO_UTC})"),
        ColumnType::Json => format!("({c})::jsonb"),
        ColumnType::Array | ColumnType::Other => c.to_string(),
    }
}

/// A list of ids from an array (of any element type, a domain over one too), a JSON
/// array or one scalar: each id as a string (Vitally's ids are strings: `[1, 2]` would be
/// no account at all), NULLs, empty ids and repeats left out, first-seen order kept;
/// never NULL.
fn id_list(reference: &str, ty: ColumnType) -> String {
    let c = reference;
    let strings = |elements: &str, text: &str, keep: &str| {
        format!(
            "(SELECT coalesce(jsonb_agg(to_jsonb(d.v) ORDER BY d.o), '[]'::jsonb) \
             FROM (SELECT {text} AS v, min(o) AS o FROM {elements} WITH ORDINALITY AS u(e, o) \
                   WHERE {keep} AND {text} <> '' GROUP BY 1) d)"
        )
    };
    match ty {
        ColumnType::Array => strings(&format!("unnest({c})"), "(e)::text", "e IS NOT NULL"),
        ColumnType::Json => strings(
            &format!(
                "jsonb_array_elements(CASE jsonb_typeof(({c})::jsonb) WHEN 'array' THEN ({c})::jsonb WHEN 'null' THEN '[]'::jsonb \
                 ELSE jsonb_build_array(({c})::jsonb) END)"
            ),
            "(e #>> '{}')",
            "jsonb_typeof(e) <> 'null'",
        ),
        _ => format!("(CASE WHEN {c} IS NULL OR ({c})::text = '' THEN '[]'::jsonb ELSE jsonb_build_array(({c})::text) END)"),
    }
}

/// One id (an organization's, an account's, a user's) as a string, whatever its type.
fn id_value(reference: &str, ty: ColumnType) -> String {
    match ty {
        ColumnType::Json => format!("((({reference})::jsonb) #>> '{{}}')"),
        _ => format!("({reference})::text"),
    }
}

/// A column's value in the form hashed to tell whether a record changed: the value
/// itself, hashed by its type (fast, and independent of the session's settings),
/// except `json` (its spacing would count: as `jsonb`) and types Postgres cannot
/// hash (as text).
fn canonical(reference: &str, column: &Column) -> String {
    match column.ty {
        ColumnType::Json => format!("({reference})::jsonb"),
        _ if !column.hashable => format!("({reference})::text"),
        _ => reference.to_string(),
    }
}

/// `jsonb_build_object` takes at most 50 pairs: longer objects are concatenated.
fn object(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".into();
    }
    pairs
        .chunks(50)
        .map(|chunk| {
            let args: Vec<String> = chunk.iter().map(|(k, v)| format!("{}, {v}", quote_literal(k))).collect();
            format!("jsonb_build_object({})", args.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

impl Plan {
    /// The columns a run keeps of each row (each once, even if mapped twice), with
    /// the name it keeps it under in the stage table.
    pub fn kept_columns(&self) -> Vec<(&Column, String)> {
        let mut kept: Vec<(&Column, String)> = Vec::new();
        for f in &self.fields {
            if !kept.iter().any(|(c, _)| c.name == f.column.name) {
                let alias = format!("c{}", kept.len() + 1);
                kept.push((&f.column, alias));
            }
        }
        kept
    }

    fn alias_of(&self, column: &Column) -> String {
        self.kept_columns().into_iter().find(|(c, _)| c.name == column.name).map(|(_, a)| a).expect("a kept column")
    }

    /// What the records of this plan are made of: when it changes (a new mapping, an
    /// option, a column's type), every record counts as changed.
    pub fn fingerprint(&self, options: &Options) -> String {
        let fields: Vec<String> = self.fields.iter().map(|f| format!("{:?}={}:{:?}", f.target, f.column.name, f.column.ty)).collect();
        format!("v2|{:?}|{}:{:?}|{}|{:?}", self.object, self.key.name, self.key.ty, fields.join(","), options)
    }

    /// The one pass over the sync's query, run as its owner: per row the key, a 64-bit
    /// hash of the key and mapped values, and, for the rows `admit` lets through only,
    /// the record as JSON. `admit(seed, key, values...)` hashes the row (`seed` being the
    /// fingerprint's hash) and returns the hash, or NULL for a row not to be written; it
    /// sees every row once, before any JSON is made (`OFFSET 0` keeps it so).
    /// `keys`: only the rows whose key is one of the text array `$1` (a live re-plan),
    /// the key compared in its own type `key_type`, so that an index on the source
    /// column can serve the restriction.
    /// The query restricted to the rows whose key is one of the text array `$1`, the key
    /// compared in its own type `key_type` (so that an index on the source column can
    /// serve it): what a live re-plan reads, and what `vitally.explain_live` explains.
    pub fn restricted_sql(&self, query: &str, key_type: &str) -> String {
        format!("SELECT * FROM (\n{query}\n) q WHERE q.{} = ANY ($1::pg_catalog.text[]::{key_type}[])", quote_ident(&self.key.name))
    }

    pub fn records_sql(&self, query: &str, seed: i64, limit: Option<i64>, keys: Option<&str>, admit: &str, options: &Options) -> String {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_else(|| " OFFSET 0".into());
        let source = match keys {
            None => format!("(\n{query}\n) q{limit}"),
            Some(key_type) => format!("({}) q{limit}", self.restricted_sql(query, key_type)),
        };
        let key = format!("(q.{})::text", quote_ident(&self.key.name));
        let kept = self.kept_columns();
        let values: Vec<String> = kept.iter().map(|(c, _)| canonical(&format!("q.{}", quote_ident(&c.name)), c)).collect();
        let mut hashed = vec![format!("'{seed}'::pg_catalog.int8"), key.clone()];
        if values.len() + hashed.len() <= MAX_ARGUMENTS {
            hashed.extend(values);
        } else {
            // A function takes at most 100 arguments: many values go as rows of values.
            hashed.extend(values.chunks(MAX_ARGUMENTS / 2).map(|chunk| format!("ROW({})", chunk.join(", "))));
        }
        let mut select = vec![format!("{key} AS sync_key"), format!("{admit}({}) AS hash", hashed.join(", "))];
        select.extend(kept.iter().map(|(c, alias)| format!("q.{} AS {alias}", quote_ident(&c.name))));
        // Each layer's OFFSET 0 keeps what it computes (the hash, the payload, its size)
        // computed once per row.
        format!(
            "SELECT p.sync_key, p.hash, p.payload, {validation} AS error \
             FROM (SELECT r.sync_key, r.hash, r.payload, {bytes} AS bytes, 1 AS dups \
                   FROM (SELECT s.sync_key, s.hash, {payload} AS payload \
                         FROM (SELECT {select} FROM {source}) s WHERE s.hash IS NOT NULL OFFSET 0) r OFFSET 0) p",
            validation = self.validation_sql(),
            bytes = json_bytes("r.payload"),
            payload = self.payload_sql(options),
            select = select.join(", "),
        )
    }

    /// The record as `jsonb`, in Vitally's field names, from a stage row `s`.
    pub fn payload_sql(&self, options: &Options) -> String {
        let mut top: Vec<(String, String)> = Vec::new();
        let id_field = match self.object {
            Object::User => Some("userId"),
            Object::Account => Some("accountId"),
            Object::Organization => Some("organizationId"),
            Object::NpsResponse => Some("externalId"),
            // An event's key gives its messageId, which is not part of the payload.
            Object::Event => None,
        };
        if let Some(f) = id_field {
            top.push((f.into(), "s.sync_key".into()));
        }
        let mut nested: Vec<(String, String)> = Vec::new();
        for field in &self.fields {
            let reference = format!("s.{}", self.alias_of(&field.column));
            match &field.target {
                Target::Top("accountIds") => top.push(("accountIds".into(), id_list(&reference, field.column.ty))),
                Target::Top(name @ ("organizationId" | "accountId" | "userId")) => {
                    top.push((name.to_string(), id_value(&reference, field.column.ty)))
                }
                Target::Top(name) => top.push((name.to_string(), value(&reference, field.column.ty))),
                Target::Trait(name) | Target::Property(name) => nested.push((name.clone(), value(&reference, field.column.ty))),
            }
        }
        match self.object {
            Object::Event => top.push(("properties".into(), object(&nested))),
            Object::NpsResponse => {}
            _ => top.push(("traits".into(), object(&nested))),
        }
        let payload = object(&top);
        if options.skip_nulls {
            format!("jsonb_strip_nulls({payload})")
        } else {
            payload
        }
    }

    /// The check of a date-time field given by a column that is not a timestamp (text,
    /// JSON): ISO-8601 with a time and a zone, as Vitally takes it, so a malformed value
    /// makes its own record invalid rather than its whole batch refused. `required`:
    /// NULL or empty is invalid too.
    fn timestamp_check(&self, field: &str, required: bool) -> Vec<String> {
        let column = self.top(field);
        let name = self.column_named(field);
        let value = format!("p.payload->>{}", quote_literal(field));
        let mut cases = Vec::new();
        if required {
            cases.push(format!("WHEN coalesce({value}, '') = '' THEN {}", quote_literal(&format!("{field} is required: {name} is NULL or empty"))));
        }
        if column.is_some_and(|c| !matches!(c.ty, ColumnType::TimestampTz | ColumnType::Timestamp)) {
            cases.push(format!(
                "WHEN coalesce({value}, '') <> '' AND (jsonb_typeof(p.payload->{field_lit}) <> 'string' OR {value} !~ {ISO_8601}) \
                 THEN format({message}, p.payload->{field_lit})",
                field_lit = quote_literal(field),
                // A column name with % must not make format() fail.
                message = quote_literal(&format!(
                    "{field} must be an ISO-8601 date-time with a time zone, like 2026-06-01T10:00:00Z, got %s: cast {} to timestamptz in the query, or fix its text",
                    name.replace('%', "%%")
                )),
            ));
        }
        cases
    }

    fn column_named(&self, field: &str) -> String {
        self.top(field).map(|c| c.name.clone()).unwrap_or_else(|| field.to_string())
    }

    /// What is wrong with a record (`p.sync_key`, `p.payload`, `p.bytes`, `p.dups`), or NULL.
    pub fn validation_sql(&self) -> String {
        let mut cases = vec![
            format!(
                "WHEN p.sync_key IS NULL OR p.sync_key = '' THEN {}",
                quote_literal(&format!("the sync key column \"{}\" is NULL or empty: every record needs an id", self.key.name))
            ),
            "WHEN p.dups > 1 THEN format('sync key %s appears %s times in the query''s result: none of its rows is sent', quote_literal(p.sync_key), p.dups)".to_string(),
            format!(
                "WHEN p.bytes > {MAX_RECORD_BYTES} THEN format('the record is %s bytes of JSON, over the limit of {MAX_RECORD_BYTES}: leave large columns out of the query or the mapping', p.bytes)"
            ),
        ];
        let empty = |field: &str| format!("coalesce(p.payload->>{}, '') = ''", quote_literal(field));
        match self.object {
            // Every user sync but update only maps accountIds (check_required).
            Object::User if self.behavior != crate::definition::Behavior::UpdateOnly => cases.push(format!(
                "WHEN NOT jsonb_path_exists(p.payload->'accountIds', '$[*] ? (@ != null && @ != \"\")') THEN {}",
                quote_literal(&format!("a user needs at least one account: {} is NULL or empty", self.column_named("accountIds")))
            )),
            Object::User => {}
            Object::Event => {
                cases.push(format!(
                    "WHEN {} THEN {}",
                    empty("event"),
                    quote_literal(&format!("an event needs a name: {} is NULL or empty", self.column_named("event")))
                ));
                let actors: Vec<String> =
                    ["userId", "accountId", "organizationId"].iter().filter(|f| self.top(f).is_some()).map(|f| self.column_named(f)).collect();
                cases.push(format!(
                    "WHEN {} AND {} AND {} THEN {}",
                    empty("userId"),
                    empty("accountId"),
                    empty("organizationId"),
                    quote_literal(&format!("an event needs someone who did it: {} NULL or empty", describe_all(&actors)))
                ));
                cases.extend(self.timestamp_check("timestamp", false));
            }
            Object::NpsResponse => {
                cases.push(format!(
                    "WHEN {} THEN {}",
                    empty("userId"),
                    quote_literal(&format!("an NPS response needs a user: {} is NULL or empty", self.column_named("userId")))
                ));
                cases.extend(self.timestamp_check("respondedAt", true));
                // Nested CASE: Postgres does not promise the order in which AND evaluates.
                cases.push(
                    "WHEN CASE WHEN jsonb_typeof(p.payload->'score') = 'number' \
                     THEN NOT ((p.payload->>'score')::numeric BETWEEN 0 AND 10 AND (p.payload->>'score')::numeric = trunc((p.payload->>'score')::numeric)) \
                     ELSE true END \
                     THEN format('score must be a whole number from 0 to 10, got %s', coalesce(p.payload->>'score', 'NULL'))"
                        .to_string(),
                );
            }
            Object::Account | Object::Organization => {}
        }
        format!("CASE {} END", cases.join(" "))
    }

    /// Says again what is wrong with the records of keys that repeat (`repeats`:
    /// `sync_key, n`), now that it is known how often each does. Only built-in functions
    /// over `jsonb` and `text`: it runs as the extension's owner.
    pub fn repeats_sql(&self, records: &str, repeats: &str) -> String {
        format!(
            "UPDATE {records} t SET error = v.error \
             FROM (SELECT p.row, {validation} AS error \
                   FROM (SELECT r.ctid AS row, r.sync_key, r.payload, {bytes} AS bytes, k.n AS dups \
                         FROM {records} r JOIN {repeats} k ON k.sync_key = r.sync_key OFFSET 0) p OFFSET 0) v \
             WHERE t.ctid = v.row",
            validation = self.validation_sql(),
            bytes = json_bytes("r.payload"),
        )
    }
}

/// The length of a `jsonb` value as JSON text, worked out only where it could exceed
/// the limit: turning a million records into text took a second. The text of a `jsonb`
/// is at most about six times its binary size (a string of control characters, each
/// written `\u00XX`), so an uncompressed value below an eighth of the limit cannot be
/// over it; a compressed one is measured.
fn json_bytes(jsonb: &str) -> String {
    format!(
        "(CASE WHEN pg_column_compression({jsonb}) IS NOT NULL OR pg_column_size({jsonb}) > {} THEN octet_length(({jsonb})::text) ELSE 0 END)",
        MAX_RECORD_BYTES / 8
    )
}

fn describe_all(columns: &[String]) -> String {
    match columns {
        [one] => format!("{one} is"),
        [a, b] => format!("{a} and {b} are"),
        many => format!("{} are all", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::Object;
    use crate::mapping::plan;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column { name: name.into(), ty, hashable: true }
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        // With standard_conforming_strings off, '\' would end the literal: E'' reads the same either way.
        assert_eq!(quote_literal(r"a\'; DROP"), r"E'a\\''; DROP'");
    }

    #[test]
    fn more_than_50_traits_are_built_in_chunks() {
        let mut columns = vec![col("id", ColumnType::Other)];
        columns.extend((0..120).map(|i| col(&format!("c{i}"), ColumnType::Other)));
        let p = plan(Object::Organization, crate::definition::Behavior::Upsert, "id", &columns, None).unwrap();
        let sql = p.payload_sql(&Options::default());
        assert_eq!(sql.matches("jsonb_build_object(").count(), 1 + 3, "one for the top level, three for 120 traits");
        let sql = p.records_sql("SELECT 1", 0, None, None, "admit", &Options::default());
        assert_eq!(sql.matches("ROW(").count(), 3, "121 values hashed as three rows: a function takes at most 100 arguments");
    }

    #[test]
    fn timestamps_become_utc_iso_strings() {
        let p = plan(
            Object::Account,
            crate::definition::Behavior::Upsert,
            "id",
            &[col("id", ColumnType::Other), col("seen", ColumnType::TimestampTz)],
            None,
        )
        .unwrap();
        assert!(p.payload_sql(&Options::default()).contains("AT TIME ZONE 'UTC'"));
    }

    #[test]
    fn the_query_cannot_swallow_the_closing_parenthesis_with_a_comment() {
        let p = plan(Object::Organization, crate::definition::Behavior::Upsert, "id", &[col("id", ColumnType::Other)], None).unwrap();
        let sql = p.records_sql("SELECT 1 AS id -- trailing comment", 7, None, None, "admit", &Options::default());
        assert!(sql.contains("-- trailing comment\n) q"));
    }

    #[test]
    fn a_live_re_plan_compares_the_key_in_its_own_type_inside_the_query() {
        let p = plan(Object::Organization, crate::definition::Behavior::Upsert, "id", &[col("id", ColumnType::Other)], None).unwrap();
        let sql = p.records_sql("SELECT 1 AS id", 7, None, Some("pg_catalog.int8"), "admit", &Options::default());
        assert!(
            sql.contains("FROM (SELECT * FROM (\nSELECT 1 AS id\n) q WHERE q.\"id\" = ANY ($1::pg_catalog.text[]::pg_catalog.int8[])) q OFFSET 0"),
            "{sql}"
        );
    }

    #[test]
    fn values_postgres_cannot_hash_are_hashed_as_text() {
        let mut spot = col("spot", ColumnType::Other);
        spot.hashable = false;
        let p = plan(
            Object::Account,
            crate::definition::Behavior::Upsert,
            "id",
            &[col("id", ColumnType::Other), spot, col("doc", ColumnType::Json)],
            None,
        )
        .unwrap();
        let sql = p.records_sql("SELECT 1", 3, None, None, "admit", &Options::default());
        assert!(sql.contains("admit('3'::pg_catalog.int8, (q.\"id\")::text, (q.\"spot\")::text, (q.\"doc\")::jsonb)"), "{sql}");
    }

    #[test]
    fn a_column_mapped_twice_is_kept_once() {
        let columns = [col("id", ColumnType::Other), col("name", ColumnType::Other)];
        let m = serde_json::json!({"traits.a": "name", "traits.b": "name"});
        let p = plan(Object::Account, crate::definition::Behavior::Upsert, "id", &columns, Some(&m)).unwrap();
        assert_eq!(p.kept_columns().len(), 1);
        assert!(p.records_sql("SELECT 1", 0, None, None, "admit", &Options::default()).contains("q.\"name\" AS c1"));
    }

    #[test]
    fn the_fingerprint_changes_with_the_mapping_and_options() {
        let columns = [col("id", ColumnType::Other), col("name", ColumnType::Other)];
        let a = plan(Object::Account, crate::definition::Behavior::Upsert, "id", &columns, None).unwrap();
        let b = plan(Object::Account, crate::definition::Behavior::Upsert, "id", &columns, Some(&serde_json::json!({"traits.n": "name"}))).unwrap();
        assert_ne!(a.fingerprint(&Options::default()), b.fingerprint(&Options::default()));
        assert_ne!(a.fingerprint(&Options::default()), a.fingerprint(&Options { skip_nulls: true, ..Options::default() }));
    }
}
