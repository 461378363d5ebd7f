//! Layering of defaults, the TOML file, `ROOMCAST_*` variables and flags.
//!
//! Every scalar setting `a.b_c` can be set by the variable `ROOMCAST_A_B_C`;
//! the variable's text is read as the setting's type (integer, boolean or string).

use std::path::Path;

use roomcast::Config;
use toml::{Table, Value};

/// Variables with the prefix that are not settings.
const NOT_SETTINGS: &[&str] = &["ROOMCAST_CONFIG"];

/// Every scalar setting of the default configuration: (dotted key, default value).
pub fn scalar_keys() -> Vec<(String, Value)> {
    fn walk(prefix: &str, t: &Table, out: &mut Vec<(String, Value)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(inner) => walk(&key, inner, out),
                Value::Array(_) => {}
                scalar => out.push((key, scalar.clone())),
            }
        }
    }
    let defaults = Value::try_from(Config::default()).expect("the default config serialises");
    let mut out = Vec::new();
    if let Value::Table(t) = defaults {
        walk("", &t, &mut out);
    }
    out
}

/// The environment variable for a dotted key: `limits.max_connections` → `ROOMCAST_LIMITS_MAX_CONNECTIONS`.
pub fn env_name(key: &str) -> String {
    format!("ROOMCAST_{}", key.replace('.', "_").to_uppercase())
}

fn typed(key: &str, like: &Value, text: &str, source: &str) -> Result<Value, String> {
    match like {
        Value::Integer(_) => text
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("{source}: `{key}` must be a whole number, got {text:?}")),
        Value::Boolean(_) => match text.trim() {
            "true" | "1" | "yes" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" => Ok(Value::Boolean(false)),
            _ => Err(format!(
                "{source}: `{key}` must be true or false, got {text:?}"
            )),
        },
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn set(table: &mut Table, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("made a table above");
    }
    t.insert(last.to_owned(), value);
}

/// Builds the configuration. Errors name the file and line, the variable, or the flag.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, String)],
) -> Result<Config, String> {
    let mut table = Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // Parse as the config type first: errors then carry the line and the key.
        toml::from_str::<Config>(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let keys = scalar_keys();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("ROOMCAST_") && !NOT_SETTINGS.contains(&k.as_str()))
        .collect();
    vars.sort();
    // Where each key given outside the file came from, to name it in errors.
    let mut sources: Vec<(String, String)> = Vec::new();
    for (var, text) in vars {
        match keys.iter().find(|(k, _)| env_name(k) == var) {
            Some((key, like)) => {
                set(&mut table, key, typed(key, like, &text, &var)?);
                sources.push((key.clone(), var));
            }
            None => eprintln!("roomcast: ignoring {var}: no such setting"),
        }
    }
    for (key, text) in flags {
        let like = keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::String(String::new()));
        set(&mut table, key, typed(key, &like, text, "flag")?);
        sources.retain(|(k, _)| k != key);
        sources.push((key.to_string(), format!("--{}", flag_name(key))));
    }
    let from = |e: String| match sources.iter().find(|(k, _)| names(&e, k)) {
        Some((_, source)) => format!("{source}: {e}"),
        None => match file {
            Some(path) => format!("{}: {e}", path.display()),
            None => e,
        },
    };
    let config: Config = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| from(e.to_string().trim().to_owned()))?;
    config.validate().map_err(from)?;
    Ok(config)
}

/// The command-line flag of a key (`auth.jwt.secret` is `--jwt-secret`).
fn flag_name(key: &str) -> String {
    match key {
        "broker.url" => "broker".to_owned(),
        "broker.emitters" => "emitters".to_owned(),
        "auth.mode" => "auth".to_owned(),
        "api.key" => "api-key".to_owned(),
        other => other.trim_start_matches("auth.").replace(['.', '_'], "-"),
    }
}

/// Whether the message `e` speaks of `key` (as a whole dotted name).
fn names(e: &str, key: &str) -> bool {
    e.match_indices(key).any(|(i, _)| {
        let before = e[..i].chars().next_back();
        let after = e[i + key.len()..].chars().next();
        let edge =
            |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        edge(before) && edge(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A file in the system temp dir, removed on drop.
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> TempFile {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("roomcast-test-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                TempFile(p)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let f = write("listen = \"127.0.0.1:9001\"\n[limits]\nmax_connections = 5\nmax_queue_bytes = 7\n[api]\nkey = \"from-file\"\n");
        let c = load(
            Some(&f.0),
            env(&[
                ("ROOMCAST_LIMITS_MAX_CONNECTIONS", "6"),
                ("ROOMCAST_API_KEY", "from-env"),
                ("PATH", "/bin"),
            ]),
            &[("api.key", "from-flag".into())],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.limits.max_connections, 6);
        assert_eq!(c.limits.max_queue_bytes, 7);
        assert_eq!(c.api.key, "from-flag");
        assert_eq!(
            c.heartbeat.interval_ms,
            Config::default().heartbeat.interval_ms
        );
    }

    #[test]
    fn room_rules_come_from_the_file() {
        let f =
            write("[[rooms]]\npattern = \"big:*\"\njoin_leave_events = false\nmax_members = 10\n");
        let c = load(Some(&f.0), env(&[]), &[]).unwrap();
        assert_eq!(c.rooms.len(), 1);
        assert!(!c.rooms[0].join_leave_events);
        assert!(c.rooms[0].presence);
        assert_eq!(c.hub_config().rooms.for_room("big:1").max_members, 10);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let f = write("listen = \"127.0.0.1:1\"\n\n[limits]\nmax_conections = 5\n");
        let e = load(Some(&f.0), env(&[]), &[]).unwrap_err();
        assert!(e.contains("line 4") && e.contains("max_conections"), "{e}");
        let f = write("[heartbeat]\ninterval_ms = \"soon\"\n");
        let e = load(Some(&f.0), env(&[]), &[]).unwrap_err();
        assert!(e.contains("line 2") && e.contains("interval_ms"), "{e}");
        let f = write("[heartbeat\n");
        let e = load(Some(&f.0), env(&[]), &[]).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = load(
            None,
            env(&[("ROOMCAST_LIMITS_MAX_CONNECTIONS", "many")]),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("ROOMCAST_LIMITS_MAX_CONNECTIONS"), "{e}");
        let e = load(None, env(&[("ROOMCAST_HEARTBEAT_INTERVAL_MS", "0")]), &[]).unwrap_err();
        assert!(e.contains("heartbeat.interval_ms"), "{e}");
        let e = load(Some(Path::new("/nonexistent/roomcast.toml")), env(&[]), &[]).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn invalid_values_name_where_they_were_set() {
        let e = load(None, env(&[("ROOMCAST_LOG", "verbose")]), &[]).unwrap_err();
        assert!(e.starts_with("ROOMCAST_LOG: log: "), "{e}");
        let e = load(None, env(&[]), &[("log", "verbose".into())]).unwrap_err();
        assert!(e.starts_with("--log: log: "), "{e}");
        let e = load(None, env(&[("ROOMCAST_AUTH_JWT_ALGORITHM", "none")]), &[]).unwrap_err();
        assert!(
            e.starts_with("ROOMCAST_AUTH_JWT_ALGORITHM: auth.jwt.algorithm must be one of"),
            "{e}"
        );
        let f = write("[auth.jwt]\nalgorithm = \"hs256\"\n");
        let e = load(Some(&f.0), env(&[]), &[]).unwrap_err();
        assert!(e.contains(".toml: auth.jwt.algorithm"), "{e}");
        let e = load(None, env(&[("ROOMCAST_HISTORY_TTL", "0")]), &[]).unwrap_err();
        assert!(e.starts_with("ROOMCAST_HISTORY_TTL: "), "{e}");
        assert_eq!(flag_name("auth.jwt.secret"), "jwt-secret");
        assert_eq!(flag_name("history.size"), "history-size");
    }

    #[test]
    fn every_scalar_setting_is_documented() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .expect("docs/configuration.md exists");
        for (key, _) in scalar_keys() {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/configuration.md does not document `{key}`"
            );
            assert!(
                doc.contains(&env_name(&key)),
                "docs/configuration.md does not name {}",
                env_name(&key)
            );
        }
        for rule_key in [
            "pattern",
            "join",
            "publish",
            "join_leave_events",
            "presence",
            "max_members",
            "history_size",
            "history_ttl",
        ] {
            assert!(
                doc.contains(&format!("`rooms[].{rule_key}`")),
                "rooms[].{rule_key} undocumented"
            );
        }
    }
}
