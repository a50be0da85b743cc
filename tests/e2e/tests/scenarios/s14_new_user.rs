//! What a new user hits first, outside the shapes the other scenarios use: account ids
//! that are integers (serial keys), UUIDs, numerics or JSON numbers.

use crate::{cluster, APP_DB};
use vitally_e2e::{emulator, emulator_destination, scalar, sync_and_wait, Faults};

crate::trials!("14_new_user":
    a_users_accounts_arrive_as_strings_whatever_their_type,
);

fn a_users_accounts_arrive_as_strings_whatever_their_type() {
    let vitally = emulator(Faults::default());
    let mut db = cluster().admin(APP_DB);
    emulator_destination(&mut db, "nu_types", &vitally);
    db.batch_execute("CREATE DOMAIN nu_int_list AS int[]").unwrap();
    // Each with a NULL and a repeat, which are left out.
    let cases = [
        ("int2", "ARRAY[1, NULL, 2, 1]::int2[]", vec!["1", "2"]),
        ("int4", "ARRAY[1, NULL, 2, 1]::int4[]", vec!["1", "2"]),
        ("int8", "ARRAY[1, NULL, 2, 1]::int8[]", vec!["1", "2"]),
        ("numeric", "ARRAY[1, NULL, 2, 1]::numeric[]", vec!["1", "2"]),
        ("text", "ARRAY['1', NULL, '2', '1']::text[]", vec!["1", "2"]),
        ("varchar", "ARRAY['1', NULL, '2', '', '1']::varchar[]", vec!["1", "2"]),
        ("uuid", "ARRAY['8f0c1f52-6a43-4a7e-9a43-2d3c8a1b0e11', NULL]::uuid[]", vec!["8f0c1f52-6a43-4a7e-9a43-2d3c8a1b0e11"]),
        ("jsonb_numbers", "'[1, null, 2, 1]'::jsonb", vec!["1", "2"]),
        ("json_strings", "'[\"1\", \"2\", \"1\"]'::json", vec!["1", "2"]),
        ("domain", "ARRAY[1, NULL, 2, 1]::nu_int_list", vec!["1", "2"]),
        ("one_integer", "1::bigint", vec!["1"]),
        ("jsonb_one_number", "'1'::jsonb", vec!["1"]),
    ];
    for (name, accounts, expected) in &cases {
        let sync = format!("nu_{name}");
        db.execute(
            &format!(
                "SELECT vitally.create_sync($1, 'nu_types', 'user', 'upsert',
                        $q$SELECT 'u_{name}' AS id, {accounts} AS account_ids, 7 AS organization_id$q$)"
            ),
            &[&sync],
        )
        .unwrap();
        let payload: String = scalar(&mut db, &format!("SELECT payload::text FROM vitally.preview('{sync}')"));
        let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(payload["accountIds"], serde_json::json!(expected), "{name}: {payload}");
        assert_eq!(payload["organizationId"], "7", "{name}: ids are strings: {payload}");
        assert_eq!(sync_and_wait(&mut db, &sync, 30), "succeeded", "{name}");
        let user = vitally.object("users", &format!("u_{name}")).unwrap_or_else(|| panic!("{name}: user not delivered"));
        let mut got = user.account_ids.clone();
        got.sort();
        assert_eq!(got, *expected, "{name}");
    }
}
