//! Built-in function knowledge: functions that always need the primary, volatile
//! functions known to be read-only, and the allowlist used before `pg_proc` is loaded.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Functions that write data, take locks, consume sequences/xids or change session or
/// cluster state: always the primary, in any schema.
const WRITE_NAMES: &[&str] = &[
    "nextval",
    "setval",
    "currval", // reads this session's nextval: only meaningful where nextval ran
    "lastval",
    "setseed",
    "set_config",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_notify",
    "loread",
    "lowrite",
    "dblink",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_logical_emit_message",
    "pg_replication_slot_advance",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_current_wal_lsn", // fails on a standby
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    "pg_stat_clear_snapshot",
];

/// Name prefixes of write functions (advisory locks, large objects, stats resets, ...).
const WRITE_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "dblink_",
    "pg_stat_reset",
    "pg_replication_origin_",
    "pg_wal_replay_",
    "pg_sequence_set",
];

/// Volatile functions that read nothing they could change: a replica may run them.
const READ_ONLY_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "now",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_backend_pid",
    "txid_current_snapshot",
    "pg_current_snapshot",
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "version",
    "current_setting",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "inet_server_port",
    "inet_server_addr",
    "inet_client_port",
    "inet_client_addr",
    "pg_stat_get_activity",
    "pg_blocking_pids",
];

/// Common immutable/stable functions, trusted as read-only before `pg_proc` is loaded.
#[rustfmt::skip]
const ALLOW_BEFORE_SNAPSHOT: &[&str] = &[
    // aggregates
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "percentile_cont",
    "percentile_disc", "mode", "corr", "covar_pop", "covar_samp", "xmlagg", "any_value",
    // window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    // strings
    "lower", "upper", "length", "char_length", "character_length", "octet_length",
    "bit_length", "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "concat",
    "concat_ws", "replace", "split_part", "format", "left", "right", "lpad", "rpad",
    "position", "strpos", "starts_with", "reverse", "repeat", "initcap", "md5", "sha224",
    "sha256", "sha384", "sha512", "encode", "decode", "to_hex", "ascii", "chr", "quote_ident",
    "quote_literal", "quote_nullable", "regexp_replace", "regexp_match", "regexp_matches",
    "regexp_split_to_array", "regexp_split_to_table", "regexp_like", "regexp_count",
    "regexp_substr", "regexp_instr", "translate", "overlay", "string_to_array",
    "array_to_string", "convert_from", "convert_to", "string_to_table", "normalize",
    // math
    "abs", "round", "floor", "ceil", "ceiling", "greatest", "least", "trunc", "mod", "power",
    "pow", "sqrt", "cbrt", "exp", "ln", "log", "log10", "sign", "pi", "degrees", "radians",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "div", "width_bucket", "gcd", "lcm",
    // conditionals (usually expressions, listed for function-call spellings)
    "coalesce", "nullif", "exists",
    // date/time
    "date_trunc", "extract", "date_part", "to_char", "to_timestamp", "to_date", "to_number",
    "age", "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval",
    "date_bin", "justify_days", "justify_hours", "justify_interval", "isfinite", "timezone",
    "current_timestamp", "current_date", "current_time", "localtime", "localtimestamp",
    // session information (stable)
    "current_user", "session_user", "user", "current_role", "current_schema",
    "current_schemas", "current_database", "current_catalog", "pg_typeof",
    // json / jsonb
    "json_build_object", "jsonb_build_object", "json_build_array", "jsonb_build_array",
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_array_length",
    "jsonb_array_length", "json_extract_path", "json_extract_path_text", "jsonb_extract_path",
    "jsonb_extract_path_text", "json_object_keys", "jsonb_object_keys", "json_each",
    "jsonb_each", "json_each_text", "jsonb_each_text", "json_array_elements",
    "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
    "json_typeof", "jsonb_typeof", "jsonb_set", "jsonb_set_lax", "jsonb_insert",
    "jsonb_pretty", "jsonb_strip_nulls", "json_strip_nulls", "jsonb_path_query",
    "jsonb_path_exists", "jsonb_path_match", "jsonb_path_query_array",
    "jsonb_path_query_first", "json_populate_record", "jsonb_populate_record",
    "json_populate_recordset", "jsonb_populate_recordset", "json_to_record", "jsonb_to_record",
    "json_to_recordset", "jsonb_to_recordset", "json_object", "jsonb_object", "json_array",
    "json_scalar",
    // arrays and set-returning functions
    "array", "array_length", "array_upper", "array_lower", "array_position",
    "array_positions", "array_append", "array_prepend", "array_cat", "array_remove",
    "array_replace", "array_dims", "array_ndims", "cardinality", "unnest", "array_fill",
    "trim_array", "generate_series", "generate_subscripts",
    // function-style casts
    "int2", "int4", "int8", "integer", "bigint", "smallint", "text", "varchar", "numeric",
    "float4", "float8", "bool", "date", "timestamp", "timestamptz", "interval", "uuid", "inet",
    "cidr", "host", "masklen", "to_regclass", "to_regtype", "to_regproc", "to_regprocedure",
    "to_regnamespace", "to_regrole",
    // full text search
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight",
    // catalog helpers (psql \d, ORMs' schema introspection, pg_dump)
    "format_type", "pg_get_expr", "pg_get_indexdef", "pg_get_constraintdef",
    "pg_get_viewdef", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_functiondef",
    "pg_get_function_arguments", "pg_get_function_identity_arguments",
    "pg_get_function_result", "pg_get_userbyid", "pg_get_serial_sequence",
    "pg_get_partkeydef", "pg_get_partition_constraintdef", "pg_get_statisticsobjdef",
    "pg_table_is_visible", "pg_type_is_visible", "pg_function_is_visible",
    "pg_collation_is_visible", "pg_conversion_is_visible", "pg_opclass_is_visible",
    "pg_operator_is_visible", "pg_statistics_obj_is_visible", "obj_description",
    "col_description", "shobj_description", "pg_encoding_to_char", "pg_char_to_encoding",
    "pg_relation_size", "pg_total_relation_size", "pg_table_size", "pg_indexes_size",
    "pg_database_size", "pg_size_pretty", "pg_column_size", "has_table_privilege",
    "has_schema_privilege", "has_database_privilege", "has_column_privilege",
    "has_function_privilege", "has_sequence_privilege", "pg_has_role", "pg_get_keywords",
    "pg_tablespace_location", "pg_is_other_temp_schema", "pg_my_temp_schema",
    "pg_partition_tree", "pg_partition_root", "pg_partition_ancestors",
    "pg_relation_is_publishable", "pg_sequence_last_value", "pg_index_column_has_property",
    "pg_indexam_has_property", "pg_index_has_property", "array_to_json",
];

fn set(names: &'static [&'static str]) -> HashSet<&'static str> {
    names.iter().copied().collect()
}

/// SQL syntax that looks like a function call to sqlparser but is no `pg_proc` function
/// (`COALESCE(...)`, `CURRENT_TIMESTAMP`, `ARRAY(subquery)`, ...): read-only when unqualified,
/// with or without a snapshot.
const SQL_SYNTAX: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_catalog",
    "current_schema",
    "system_user",
    "array",
    "exists",
    "row",
    "grouping",
    "extract",
    "position",
    "substring",
    "trim",
    "overlay",
    "normalize",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "json_object",
    "json_array",
    "json_scalar",
    "json_serialize",
    "json_query",
    "json_value",
    "json_exists",
    "json_objectagg",
    "json_arrayagg",
];

pub(super) fn sql_syntax() -> &'static HashSet<&'static str> {
    static S: OnceLock<HashSet<&'static str>> = OnceLock::new();
    S.get_or_init(|| set(SQL_SYNTAX))
}

pub(super) fn write_names() -> &'static HashSet<&'static str> {
    static S: OnceLock<HashSet<&'static str>> = OnceLock::new();
    S.get_or_init(|| set(WRITE_NAMES))
}

pub(super) fn read_only_volatile() -> &'static HashSet<&'static str> {
    static S: OnceLock<HashSet<&'static str>> = OnceLock::new();
    S.get_or_init(|| set(READ_ONLY_VOLATILE))
}

pub(super) fn allow_before_snapshot() -> &'static HashSet<&'static str> {
    static S: OnceLock<HashSet<&'static str>> = OnceLock::new();
    S.get_or_init(|| set(ALLOW_BEFORE_SNAPSHOT))
}

pub(super) fn is_builtin_write(name: &str) -> bool {
    write_names().contains(name) || WRITE_PREFIXES.iter().any(|p| name.starts_with(p))
}
